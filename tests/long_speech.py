"""Minutes of speech with a known text: espeak-ng's sentences in eight voices with pauses of
0.3 to 1.5 s between them, and now and then a run of sentences with no pause long enough
for a VAD to cut at, so that a window must end inside speech and words cross its edge.

The long-form accuracy test (tests/test_long_form.py) and the CPU benchmark against
faster-whisper (bench/longform.py) hear the same audio: `long_speech(seconds, seed)` is a
pure function of its arguments (espeak-ng's output for a text and voice does not change).
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

SAMPLE_RATE = 16000
WORDS_PER_MINUTE = 160
# (espeak-ng voice, pitch 0-99): accents and variants that differ as speakers do
VOICES = (
    ("en-us", 50), ("en-gb", 40), ("en-us+f3", 60), ("en-gb-x-rp+m3", 45),
    ("en-029", 50), ("en-gb-scotland", 35), ("en-us+m5", 55), ("en-gb+f2", 65),
)
PAUSES = (0.3, 1.5)  # seconds between sentences, uniform
RUN_ON_CHANCE = 0.12  # of a sentence being followed by the next with no pause at all
RUN_ON_GAP = 0.08  # seconds between run-on sentences: shorter than any VAD's minimum silence
SILENT_LEVEL = 0.01  # espeak's leading and trailing samples quieter than this are silence

# Plain sentences on many subjects, no digits or abbreviations (a normaliser would have to
# guess how they are said); each is spoken as written.
SENTENCES = (
    "The library opens at nine in the morning and closes late on Thursdays.",
    "Our team spent the whole afternoon planning the new garden behind the school.",
    "When the train finally arrived, the platform was crowded with tired travellers.",
    "She asked whether the report could be finished before the end of the week.",
    "Heavy rain is expected across the northern valleys later this evening.",
    "The bakery on the corner sells fresh bread and small almond cakes.",
    "He forgot his umbrella on the bus and walked home in the storm.",
    "Please remember to switch off the lights when you leave the office.",
    "The museum has a new exhibition about ancient maps and the sailors who drew them.",
    "Most of the students agreed that the final exam was fair but difficult.",
    "A small boat drifted slowly across the lake as the sun went down.",
    "The doctor said that a short walk every day would help him recover.",
    "We need more volunteers to help with the festival next month.",
    "The engineers tested the bridge carefully before it was opened to traffic.",
    "My grandmother still writes letters by hand to her old friends.",
    "The price of coffee has risen again because of the poor harvest.",
    "Nobody noticed that the clock in the hall had stopped during the night.",
    "The children built a tall tower out of wooden blocks and old boxes.",
    "If the weather stays dry, we will have dinner outside in the garden.",
    "The company announced that it would hire two hundred new workers.",
    "Birds gathered on the wires as the first cold wind of autumn arrived.",
    "The committee will meet again after the holidays to discuss the budget.",
    "He practised the piano for an hour before anyone else was awake.",
    "The old lighthouse still guides ships safely into the harbour.",
    "She painted the kitchen a pale shade of yellow that caught the light.",
    "The farmers hope for warm weather so that the wheat can ripen.",
    "Several roads were closed after the river flooded the lower town.",
    "The new software update fixes a number of problems with the printer.",
    "They walked along the beach collecting shells and smooth grey stones.",
    "The teacher explained the experiment twice so that everyone understood.",
    "A famous chef will open a restaurant in the old railway station.",
    "The mountain path is steep and narrow, so walkers should take care.",
    "Our neighbours adopted a young dog that barks at every passing cyclist.",
    "The orchestra played a quiet piece that the audience had never heard.",
    "Scientists are studying how the forest recovers after a large fire.",
    "He carefully wrapped the glass vase in paper before putting it in the box.",
    "The city plans to plant thousands of trees along the main avenues.",
    "Every summer the village holds a market where farmers sell their cheese.",
    "The pilot told the passengers that the flight would land a little early.",
    "She keeps a notebook of every bird she has seen on her travels.",
    "The repairs to the roof took much longer than anyone had expected.",
    "A thick fog covered the fields, and the cows stood silent by the fence.",
    "The council voted to keep the swimming pool open through the winter.",
    "He read the instructions slowly and then assembled the chair by himself.",
    "The bookshop will host a reading by a local poet on Friday evening.",
    "Traffic was light on the motorway because most people stayed at home.",
    "The gardeners covered the young plants to protect them from the frost.",
    "Her brother works at the hospital and often comes home after midnight.",
    "The river runs through the centre of town and under seven stone bridges.",
    "We watched the stars for hours from the top of the quiet hill.",
    "The factory reduced its energy use by installing better windows.",
    "At the end of the meeting everyone thanked the chair for her patience.",
    "The cat slept in a patch of sunlight on the warm wooden floor.",
    "Visitors can rent bicycles at the station and ride along the canal.",
    "The storm knocked down several trees and left the village without power.",
    "Our new neighbour is a retired sailor with many stories about the sea.",
)


@dataclass(frozen=True)
class LongSpeech:
    """audio: float32 at 16 kHz; text: what is said, in order; sentences: each sentence
    with its (start, end) in seconds."""
    audio: np.ndarray
    text: str
    sentences: Tuple[Tuple[str, float, float], ...]

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def write(self, path: str) -> str:
        """The audio as a mono PCM16 WAV at 16 kHz."""
        pcm = (np.clip(self.audio, -1, 1) * 32767).astype("<i2")
        with wave.open(path, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE)
            out.writeframes(pcm.tobytes())
        return path


def speak(text: str, voice: str, pitch: int) -> np.ndarray:
    """espeak-ng's speech of `text` at 16 kHz, its silent ends trimmed."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "s.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(WORDS_PER_MINUTE),
                        "-w", path, text], check=True)
        with wave.open(path) as wav:
            rate = wav.getframerate()
            samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2") / 32768.0
    if rate != SAMPLE_RATE:  # espeak-ng speaks at 22050 Hz
        times = np.arange(0, len(samples) / rate, 1 / SAMPLE_RATE)
        samples = np.interp(times, np.arange(len(samples)) / rate, samples)
    loud = np.flatnonzero(np.abs(samples) > SILENT_LEVEL)
    return samples[loud[0]:loud[-1] + 1].astype(np.float32) if len(loud) else samples[:0]


def long_speech(seconds: float, seed: int = 0, long_run: float = 0.0) -> LongSpeech:
    """At least `seconds` of speech: sentences in a seeded order and voice, separated by
    pauses, with some run-on stretches (see RUN_ON_CHANCE). long_run: from the middle on,
    one stretch of at least this many seconds with no pause a VAD cuts at (longer than a
    30 s window, it must be cut inside speech)."""
    rng = random.Random(seed)
    parts: List[np.ndarray] = [np.zeros(int(0.5 * SAMPLE_RATE), np.float32)]
    said: List[Tuple[str, float, float]] = []
    cursor = 0.5
    order: List[str] = []
    while cursor < seconds:
        if not order:
            order = list(SENTENCES)
            rng.shuffle(order)
        sentence = order.pop()
        voice, pitch = VOICES[rng.randrange(len(VOICES))]
        audio = speak(sentence, voice, pitch)
        said.append((sentence, cursor, cursor + len(audio) / SAMPLE_RATE))
        in_long_run = long_run and seconds / 2 <= cursor < seconds / 2 + long_run
        gap = RUN_ON_GAP if in_long_run or rng.random() < RUN_ON_CHANCE else rng.uniform(*PAUSES)
        parts += [audio, np.zeros(int(gap * SAMPLE_RATE), np.float32)]
        cursor += (len(audio) + int(gap * SAMPLE_RATE)) / SAMPLE_RATE
    return LongSpeech(np.concatenate(parts), " ".join(s for s, _, _ in said), tuple(said))
