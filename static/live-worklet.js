// The live page's AudioWorklet: the sound of its input (every channel averaged to mono, and
// several sources connected to it summed) is resampled from the AudioContext's rate to 16 kHz
// through a windowed-sinc low-pass (no aliasing from 44.1 or 48 kHz), and posted to the main
// thread as 0.25 s frames of PCM16 little-endian (ArrayBuffers of 8000 bytes, transferred).
// The message "flush" posts what is gathered so far (possibly nothing), then {flushed: true}.
"use strict";

var OUT_RATE = 16000;
var FRAME_SAMPLES = 4000;  // 0.25 s at 16 kHz
var ZERO_CROSSINGS = 8;    // of the sinc on each side: the filter's sharpness
var PASSBAND = 0.9;        // the cut-off, as a fraction of the lower rate's Nyquist frequency

class Resampler {
  constructor(inRate, outRate) {
    this.step = inRate / outRate;  // input samples per output sample
    this.cutoff = Math.min(1, outRate / inRate) * PASSBAND;  // of the input's Nyquist
    this.half = Math.ceil(ZERO_CROSSINGS / this.cutoff);  // input samples on each side
    this.buffer = new Float32Array(4096 + 4 * this.half);
    // the first output is centred on the first input: pretend silence came before it
    this.length = this.half;
    this.position = this.half;  // where the next output sample lies, in input samples
  }

  kernel(x) {
    var u = x * this.cutoff;
    var sinc = u === 0 ? 1 : Math.sin(Math.PI * u) / (Math.PI * u);
    var w = x / (this.half + 1);
    var hann = 0.5 + 0.5 * Math.cos(Math.PI * w);  // |w| < 1
    return sinc * hann;
  }

  // the input's samples in, each output sample passed to emit(value)
  push(input, emit) {
    if (this.length + input.length > this.buffer.length) {
      var bigger = new Float32Array(2 * (this.length + input.length));
      bigger.set(this.buffer.subarray(0, this.length));
      this.buffer = bigger;
    }
    this.buffer.set(input, this.length);
    this.length += input.length;
    while (this.position + this.half < this.length) {
      var centre = Math.floor(this.position);
      var sum = 0;
      var weights = 0;
      for (var i = centre - this.half + 1; i <= centre + this.half; i++) {
        var weight = this.kernel(i - this.position);
        sum += this.buffer[i] * weight;
        weights += weight;
      }
      emit(weights ? sum / weights : 0);
      this.position += this.step;
    }
    // drop what no later output sample reaches
    var drop = Math.floor(this.position) - this.half;
    if (drop > 0) {
      this.buffer.copyWithin(0, drop, this.length);
      this.length -= drop;
      this.position -= drop;
    }
  }
}

class Pcm16Frames extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(sampleRate, OUT_RATE);
    this.startFrame();
    this.mono = new Float32Array(128);
    this.emit = this.emit.bind(this);
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        this.post();
        this.port.postMessage({ flushed: true });
      }
    };
  }

  startFrame() {
    this.frame = new ArrayBuffer(FRAME_SAMPLES * 2);
    this.view = new DataView(this.frame);
    this.filled = 0;
  }

  emit(value) {
    var clamped = Math.max(-1, Math.min(1, value));
    this.view.setInt16(2 * this.filled, Math.round(clamped * 32767), true);
    this.filled += 1;
    if (this.filled === FRAME_SAMPLES) this.post();
  }

  post() {
    if (!this.filled) return;
    var frame = this.filled === FRAME_SAMPLES ? this.frame : this.frame.slice(0, 2 * this.filled);
    this.port.postMessage(frame, [frame]);
    this.startFrame();
  }

  process(inputs) {
    var channels = inputs[0];
    if (channels && channels.length) {
      var n = channels[0].length;
      if (this.mono.length !== n) this.mono = new Float32Array(n);
      this.mono.fill(0);
      for (var c = 0; c < channels.length; c++) {
        var data = channels[c];
        for (var i = 0; i < n; i++) this.mono[i] += data[i] / channels.length;
      }
      this.resampler.push(this.mono, this.emit);
    }
    return true;  // keep running until the page disconnects the node
  }
}

registerProcessor("pcm16-frames", Pcm16Frames);
