"""Diarization error rate and speed of the speaker backends, on generated conversations of
2-4 espeak-ng voices with known turns (tests/conversations.py).

    python bench/diarize.py                              # both sets, the embedded backend
    python bench/diarize.py --set dialogue --speakers 2,3 --seeds 0,1
    python bench/diarize.py --backend embedded,pyannote  # pyannote where it can run
    python bench/diarize.py --backend live               # live sessions' labels, turn by turn

Two sets: `dialogue`, turns of 1-5 s ("Sounds good.") among voices that differ in pitch and
accent (an en-us male, an en-gb female, a Caribbean male, a Scottish female); and
`conversation`, turns of 3-4 s among voices far apart in pitch (the first set measured).
Prints one row per backend, set and number of speakers: conversations, the speakers found
(how often right), DER (pyannote.metrics, no collar; mean and worst), turns labelled with
another voice's speaker, and seconds of diarization per hour of audio (after the backend is
loaded). The pyannote backend needs pyannote.audio and its gated weights (HF_TOKEN, or
already in WHISPER_MODEL_DIR); without them its rows say why. `live` labels each turn as a
live session labels an utterance when it ends (speakers/online.py), given the turn's audio
from PAD_BEFORE before it to PAD_AFTER after it, one turn after the other.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from conversations import conversation, dialogue, diarization_error_rate, wrong_lines  # noqa: E402
from whisper_service.speakers import DiarizationUnavailable, SpeakerHints, get_diarizer  # noqa: E402
from whisper_service.speakers.online import OnlineSpeakers  # noqa: E402

SECONDS_PER_HOUR = 3600
SETS = {"dialogue": dialogue, "conversation": conversation}
PAD_BEFORE = 0.2  # the live session's START_PAD_SECONDS
PAD_AFTER = 0.2  # of the silence after a turn (the pause between turns is 0.4 s)


class TurnByTurn:
    """The live sessions' labelling as a backend of this bench: each turn one utterance."""
    name = "live"

    def __init__(self, device: str):
        self.device = device
        self.embedded = get_diarizer("embedded", "", device)

    def check(self) -> None:
        self.embedded.check()

    def found(self, talk, hints: SpeakerHints):
        online = OnlineSpeakers(hints, self.device)
        rate = len(talk.audio) / talk.duration
        labels = [online.label(talk.audio[int((start - PAD_BEFORE) * rate):int((end + PAD_AFTER) * rate)])
                  for start, end, _ in talk.turns]
        return [(start, end, label) for (start, end, _), label in zip(talk.turns, labels)
                if label is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="dialogue,conversation", help="comma-separated: dialogue, conversation")
    parser.add_argument("--speakers", default="2,3,4", help="comma-separated speaker counts")
    parser.add_argument("--turns", type=int, default=10, help="turns per conversation")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="one conversation per seed")
    parser.add_argument("--backend", default="embedded", help="comma-separated: embedded, pyannote, live")
    parser.add_argument("--max-speakers", action="store_true",
                        help="give each conversation max_speakers = its true count")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-dir", default=os.environ.get("WHISPER_MODEL_DIR", "models"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, device {args.device}")
    print("backend | set | speakers | conversations | audio s | count right | DER mean | "
          "DER worst | turns wrong | s per hour")
    print("---|---|---|---|---|---|---|---|---|---")
    for backend in args.backend.split(","):
        diarizer = (TurnByTurn(args.device) if backend == "live"
                    else get_diarizer(backend, args.model_dir, args.device))
        try:
            diarizer.check()
        except DiarizationUnavailable as error:
            print(f"{backend} | - | - | - | - | - | - | - | - | unavailable: {error}")
            continue
        for name in args.set.split(","):
            for speakers in (int(s) for s in args.speakers.split(",")):
                print(row(diarizer, name, speakers, args.turns, seeds, args.max_speakers))


def row(diarizer, name: str, speakers: int, turns: int, seeds, max_speakers: bool) -> str:
    ders, right, wrong, lines, audio_seconds, spent = [], 0, 0, 0, 0.0, 0.0
    hints = SpeakerHints(max_speakers=speakers) if max_speakers else SpeakerHints()
    for seed in seeds:
        talk = SETS[name](speakers, turns, seed=seed)
        began = time.perf_counter()
        if isinstance(diarizer, TurnByTurn):
            found = diarizer.found(talk, hints)
        else:
            found = [(t.start, t.end, t.speaker) for t in diarizer.diarize(talk.audio, hints)]
        spent += time.perf_counter() - began
        audio_seconds += talk.duration
        right += len({label for _, _, label in found}) == speakers
        ders.append(diarization_error_rate(talk.turns, found))
        wrong += wrong_lines(talk, found)
        lines += len(talk.turns)
    return (f"{diarizer.name} | {name} | {speakers} | {len(seeds)} | {audio_seconds:.0f} | "
            f"{right}/{len(seeds)} | {sum(ders) / len(ders):.3f} | {max(ders):.3f} | "
            f"{wrong}/{lines} | {spent / audio_seconds * SECONDS_PER_HOUR:.0f}")


if __name__ == "__main__":
    main()
