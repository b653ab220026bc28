"""Resemblyzer's GE2E speaker encoder, run without librosa or webrtcvad.

The `resemblyzer` wheel carries the trained weights (`pretrained.pt`, 17 MB, Apache-2.0):
a three-layer LSTM over 40 mel bands that maps 1.6 s of speech to a 256-dimensional,
L2-normalised voice embedding. Importing the package would import librosa and webrtcvad
(heavy, and webrtcvad compiles C), so it is installed without them (`--no-deps`) and only
its weights file is read; the network and its input are rebuilt here:

* the mel spectrogram is librosa.feature.melspectrogram(sr=16000, n_fft=400, hop=160,
  n_mels=40) -- a periodic Hann window, centred frames zero-padded, power spectrum, Slaney
  mel filters -- computed with torch.stft. It was checked against librosa 0.11, the release
  a fresh `pip install resemblyzer` takes, to 1e-5 relative (tests/test_speakers.py checks
  the filters against the librosa-made ones openai-whisper ships);
* the volume normalisation is Resemblyzer's normalize_volume(-30 dBFS, increase only);
  its webrtcvad silence trimming is replaced by the speech regions the caller found.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
from torch import nn

from whisper.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

PACKAGE = "resemblyzer"
WEIGHTS_FILE = "pretrained.pt"
N_FFT = 400  # 25 ms windows
HOP = 160  # 10 ms steps: one mel frame per 10 ms
N_MELS = 40
HIDDEN = 256
EMBEDDING = 256
LAYERS = 3
PARTIAL_FRAMES = 160  # 1.6 s: the length of audio the encoder was trained on
TARGET_DBFS = -30.0  # Resemblyzer's audio_norm_target_dBFS
INT16_MAX = 2**15 - 1
BATCH = 256  # windows through the LSTM at once

_lock = threading.Lock()


class EncoderMissing(RuntimeError):
    """The resemblyzer wheel (which carries the weights) is not installed."""


class VoiceEncoder(nn.Module):
    """The network of resemblyzer.VoiceEncoder, parameter for parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, HIDDEN, LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, EMBEDDING)
        self.relu = nn.ReLU()

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """(batch, frames, 40) mel spectrograms -> (batch, 256) unit-length embeddings."""
        _, (hidden, _) = self.lstm(mels)
        raw = self.relu(self.linear(hidden[-1]))
        return raw / torch.norm(raw, dim=1, keepdim=True).clamp_min(1e-12)


def weights_path() -> str:
    """pretrained.pt inside the installed resemblyzer package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderMissing(
            f"the embedded speaker model needs the {PACKAGE} package, which requirements.txt "
            "installs (pip install --no-deps resemblyzer==0.1.4)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise EncoderMissing(f"the {PACKAGE} package has no {WEIGHTS_FILE}; reinstall it")
    return path


@lru_cache(maxsize=None)
def _load(device: str) -> VoiceEncoder:
    model = VoiceEncoder()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)["model_state"]
    # the checkpoint also holds the GE2E loss's scale and bias, which inference does not use
    missing, _ = model.load_state_dict(state, strict=False)
    if missing:
        raise EncoderMissing(f"{WEIGHTS_FILE} lacks {', '.join(missing)}")
    model.eval().to(device)
    log.info("speaker encoder loaded on %s", device)
    return model


def load_encoder(device: str = "cpu") -> VoiceEncoder:
    """The encoder on `device`, loaded once per process."""
    with _lock:
        return _load(device)


# --- the encoder's input ------------------------------------------------------------------


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, log above."""
    hz = np.asanyarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = hz / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asanyarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)


def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE) -> np.ndarray:
    """librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels): Slaney-normalised triangles,
    (n_mels, n_fft // 2 + 1) float32."""
    fft_freqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


_FILTERS = torch.from_numpy(mel_filters())
_WINDOW = torch.hann_window(N_FFT)  # periodic, as scipy's get_window("hann") that librosa uses


def mel_spectrogram(audio: np.ndarray) -> np.ndarray:
    """(frames, 40) float32: Resemblyzer's wav_to_mel_spectrogram (a power mel spectrogram,
    not a log one), one frame per 10 ms, frame i centred on sample 160 i."""
    samples = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    stft = torch.stft(samples, N_FFT, HOP, window=_WINDOW, center=True, pad_mode="constant",
                      return_complex=True)
    power = stft.abs() ** 2
    return (_FILTERS @ power).T.contiguous().numpy()


def normalize_volume(audio: np.ndarray) -> np.ndarray:
    """Resemblyzer's normalize_volume(wav, -30 dBFS, increase_only=True)."""
    rms = float(np.sqrt(np.mean((audio.astype(np.float64) * INT16_MAX) ** 2))) if len(audio) else 0.0
    if rms <= 0:
        return audio
    change = TARGET_DBFS - 20 * np.log10(rms / INT16_MAX)
    if change < 0:
        return audio
    return (audio * (10 ** (change / 20))).astype(np.float32)


def embed_frames(encoder: VoiceEncoder, mel: np.ndarray, starts: np.ndarray,
                 device: Optional[str] = None) -> np.ndarray:
    """Embeddings of the PARTIAL_FRAMES-long slices of `mel` that begin at `starts`
    (mel frames; the mel is zero-padded past its end), batched: (len(starts), 256)."""
    if len(starts) == 0:
        return np.zeros((0, EMBEDDING), np.float32)
    need = int(starts.max()) + PARTIAL_FRAMES
    if need > len(mel):
        mel = np.pad(mel, ((0, need - len(mel)), (0, 0)))
    index = starts[:, None] + np.arange(PARTIAL_FRAMES)[None, :]
    device = device or next(encoder.parameters()).device
    out = []
    with torch.inference_mode():
        for first in range(0, len(starts), BATCH):
            batch = torch.from_numpy(mel[index[first : first + BATCH]]).to(device)
            out.append(encoder(batch).float().cpu().numpy())
    return np.concatenate(out)
