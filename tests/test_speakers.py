"""Speaker diarization (issue 12): the embedded backend on espeak-ng conversations with known
turns, the assignment of speakers to segments and words, the options, every format's
labels and renaming, and the pyannote backend's sentence when it cannot run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import whisper.audio

from bundled_model import bundled_model
from conversations import conversation, dialogue, diarization_error_rate, wrong_lines
from whisper_service.engines import dispatch
from whisper_service.errors import BadOption, ModelUnavailable
from whisper_service.options import TranscribeOptions
from whisper_service.speakers import SpeakerHints, SpeakerTurn, assign_speakers, encoder
from whisper_service.speakers import pitch
from whisper_service.speakers import pyannote as pyannote_backend
from whisper_service.speakers.embedded import EmbeddedDiarizer
from whisper_service.transcript import Segment, Transcript, Word
from whisper_service.writers import FORMATS, write

# Measured on these voices (tests/conversations.py) over 12 conversations of 2-4 speakers
# and seeds 0-10: DER 0.019-0.044 for 2 and 3 speakers, 0.076 at most for 4 (bench/diarize.py),
# the error being the 0.4 s resolution of a change and Silero's padding around each turn.
# 0.12 is three times the worst 2-3 speaker figure: it fails when one turn in six goes to
# the wrong speaker (1/6 of the speech = 0.17), not on boundary jitter.
MAX_DER = 0.12
# One speaker has no confusion at all; its DER is only speech found where espeak-ng's trimmed
# reference has none (Silero's 30 ms pads, the 0.4 s pauses' edges): measured 0.09-0.11.
MAX_ONE_SPEAKER_DER = 0.15


@pytest.fixture(scope="session")
def two_speakers():
    return conversation(2, 6, seed=0)


@pytest.fixture(scope="session")
def three_speakers():
    return conversation(3, 6, seed=1)


@pytest.fixture(scope="session")
def one_speaker():
    return conversation(1, 3, seed=2)


@pytest.fixture(scope="session")
def short_talk():
    """Three turns, two voices: what the real model transcribes (about 10 s)."""
    return conversation(2, 3, seed=0)


@pytest.fixture(scope="session")
def diarizer():
    return EmbeddedDiarizer("cpu")


@pytest.fixture(scope="session")
def diarized(diarizer, two_speakers, three_speakers, one_speaker):
    """Each conversation's turns as the embedded backend finds them, once per session."""
    return {n: diarizer.diarize(c.audio) for n, c in
            ((2, two_speakers), (3, three_speakers), (1, one_speaker))}


def as_triples(turns):
    return [(t.start, t.end, t.speaker) for t in turns]


# --- the encoder is Resemblyzer's, without librosa ----------------------------------------

def test_the_mel_filters_are_librosas():
    # openai-whisper ships librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) as data: our
    # Slaney filters must reproduce librosa's to float precision
    librosa_made = whisper.audio.mel_filters("cpu", 80).numpy()
    np.testing.assert_allclose(encoder.mel_filters(80), librosa_made, atol=1e-7)
    assert encoder.mel_filters().shape == (40, 201)


def test_the_encoder_loads_from_the_wheel_and_gives_unit_voices(two_speakers):
    model = encoder.load_encoder("cpu")
    assert sum(p.numel() for p in model.parameters()) == 1_423_616  # GE2E: 3 x LSTM(256) + linear
    mel = encoder.mel_spectrogram(encoder.normalize_volume(two_speakers.audio[:16000 * 3]))
    assert mel.shape == (301, 40)
    voices = encoder.embed_frames(model, mel, np.array([0, 100]))
    np.testing.assert_allclose(np.linalg.norm(voices, axis=1), 1.0, rtol=1e-5)


# --- the embedded backend --------------------------------------------------------------------

@pytest.mark.parametrize("speakers", [2, 3])
def test_the_embedded_backend_finds_the_speakers_and_their_turns(
        speakers, diarized, two_speakers, three_speakers):
    talk = {2: two_speakers, 3: three_speakers}[speakers]
    turns = diarized[speakers]
    assert len({t.speaker for t in turns}) == speakers
    assert diarization_error_rate(talk.turns, as_triples(turns)) < MAX_DER
    # every reference turn is mostly one found speaker, a different one for each voice
    found = {}
    for start, end, who in talk.turns:
        overlap = {}
        for t in turns:
            overlap[t.speaker] = overlap.get(t.speaker, 0) + max(0.0, min(end, t.end) - max(start, t.start))
        found.setdefault(who, set()).add(max(overlap, key=overlap.get))
    assert all(len(labels) == 1 for labels in found.values()), found
    assert len(set.union(*found.values())) == speakers


def test_one_speaker_is_one_speaker(diarized, one_speaker):
    turns = diarized[1]
    assert {t.speaker for t in turns} == {0}
    assert diarization_error_rate(one_speaker.turns, as_triples(turns)) < MAX_ONE_SPEAKER_DER


def test_hints_set_the_number_of_speakers(diarizer, three_speakers):
    assert len({t.speaker for t in diarizer.diarize(three_speakers.audio, SpeakerHints(max_speakers=2))}) == 2
    assert {t.speaker for t in diarizer.diarize(three_speakers.audio, SpeakerHints(num_speakers=1))} == {0}


def test_silence_has_no_speakers(diarizer):
    assert diarizer.diarize(np.zeros(16000 * 3, np.float32)) == []


# --- short turns: dialogues of voices that differ in pitch and accent (issue 25) -----------

# Measured with bench/diarize.py --set dialogue (seeds 0-4, 10 turns of 1-5 s): DER 0.06 for
# 2 voices with no turn mislabelled, 0.09 for 3 (0.06 given max_speakers), 0.086 for 4 (0.17
# at worst). Before the pitch and the two-pass clustering: 0.093, 0.112 and 0.120, with 2-4
# turns of 50 mislabelled at each count.
MAX_DIALOGUE_DER = 0.10


def test_the_readmes_two_voice_dialogue_gets_every_line_right(diarizer):
    """An en-us male and an en-gb female voice taking turns, six lines of 1-5 s ('Sounds
    good.' among them): the dialogue the README's curl line was tried on."""
    for seed in (0, 1):
        talk = dialogue(2, 6, seed=seed)
        found = as_triples(diarizer.diarize(talk.audio))
        assert len({label for _, _, label in found}) == 2
        assert wrong_lines(talk, found) == 0, seed
        assert diarization_error_rate(talk.turns, found) < MAX_DIALOGUE_DER


@pytest.mark.parametrize("hints", [SpeakerHints(), SpeakerHints(max_speakers=4)],
                         ids=["count-found", "max_speakers"])
def test_three_voices_in_short_turns_are_told_apart(diarizer, hints):
    talk = dialogue(3, 10, seed=2)
    found = as_triples(diarizer.diarize(talk.audio, hints))
    assert len({label for _, _, label in found}) == 3
    assert wrong_lines(talk, found) == 0
    assert diarization_error_rate(talk.turns, found) < MAX_DIALOGUE_DER


def test_four_voices_in_short_turns_stay_under_the_target_on_average(diarizer):
    rates = [diarization_error_rate(talk.turns, as_triples(diarizer.diarize(talk.audio)))
             for talk in (dialogue(4, 10, seed=seed) for seed in range(5))]
    assert sum(rates) / len(rates) < MAX_DIALOGUE_DER, rates


def test_pitch_of_a_voiced_sound_and_of_noise():
    t = np.arange(16000) / 16000
    voiced = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 6)).astype(np.float32) * 0.3
    track = pitch.log2_f0(voiced)
    assert len(track) == 1 + (16000 - pitch.FRAME) // pitch.HOP
    assert abs(pitch.median_pitch(track, 0, len(track)) - np.log2(150)) < 0.02
    noise = np.random.default_rng(0).normal(0, 0.3, 16000).astype(np.float32)
    assert np.isnan(pitch.median_pitch(pitch.log2_f0(noise), 0, len(track)))


# --- speakers on segments and words ------------------------------------------------------------

def seg(id, start, end, text, words=()):
    return Segment(id=id, seek=0, start=start, end=end, text=text, tokens=(1, 2), temperature=0.0,
                   avg_logprob=-0.2, compression_ratio=1.2, no_speech_prob=0.01,
                   words=tuple(Word(w, s, e, 0.9) for w, s, e in words))


def transcript_of(*segments):
    return Transcript(task="transcribe", language="en", language_probability=1.0, duration=10.0,
                      model="tiny", text="".join(s.text for s in segments), segments=segments)


TURNS = [SpeakerTurn(0.0, 2.0, 0), SpeakerTurn(2.2, 5.0, 1)]


def test_a_segment_is_split_at_the_word_where_the_speaker_changes():
    words = [(" Hello", 0.1, 0.5), (" there.", 0.6, 1.9), (" Hi", 2.3, 2.6), (" Ana.", 2.7, 3.1)]
    out = assign_speakers(transcript_of(seg(0, 0.0, 3.2, " Hello there. Hi Ana.", words)), TURNS)
    assert [(s.id, s.text, s.speaker) for s in out.segments] == [
        (0, " Hello there.", "S1"), (1, " Hi Ana.", "S2")]
    assert [w.speaker for s in out.segments for w in s.words] == ["S1", "S1", "S2", "S2"]
    assert (out.segments[0].start, out.segments[0].end) == (0.0, 1.9)
    assert (out.segments[1].start, out.segments[1].end) == (2.3, 3.2)
    assert out.segments[1].tokens == ()  # not one decode's output any more
    assert [(s.id, s.name) for s in out.speakers] == [("S1", "Speaker 1"), ("S2", "Speaker 2")]


def test_without_words_a_segment_is_split_at_the_turn_boundary():
    out = assign_speakers(transcript_of(seg(0, 0.0, 4.0, " one two three four five six seven")), TURNS)
    assert [s.speaker for s in out.segments] == ["S1", "S2"]
    assert "".join(s.text for s in out.segments) == " one two three four five six seven"
    assert out.segments[0].end == out.segments[1].start
    assert 2.0 <= out.segments[1].start <= 2.2  # in the pause between the turns


def test_speakers_are_numbered_by_who_talks_first():
    out = assign_speakers(transcript_of(seg(0, 2.5, 4.0, " later"), seg(1, 4.0, 4.5, " and")),
                          [SpeakerTurn(0.0, 2.0, 0), SpeakerTurn(2.2, 5.0, 1)])
    assert [s.speaker for s in out.segments] == ["S1", "S1"]
    assert [s.name for s in out.speakers] == ["Speaker 1"]  # only who speaks in the text


# --- every format carries the labels, renamed ones too --------------------------------------------

DIARIZED = assign_speakers(transcript_of(
    seg(0, 0.0, 1.9, " Hello there.", [(" Hello", 0.1, 0.5), (" there.", 0.6, 1.9)]),
    seg(1, 2.3, 3.2, " Hi Ana.", [(" Hi", 2.3, 2.6), (" Ana.", 2.7, 3.1)]),
    seg(2, 3.3, 4.5, " How are you?", [(" How", 3.3, 3.6), (" are", 3.6, 3.9), (" you?", 4.0, 4.5)]),
), TURNS)


def test_every_format_carries_the_speakers():
    assert write("txt", DIARIZED) == "Speaker 1: Hello there.\nSpeaker 2: Hi Ana.\nHow are you?\n"
    srt = write("srt", DIARIZED)
    assert "1\n00:00:00,100 --> 00:00:01,900\nSpeaker 1: Hello there.\n\n" in srt
    assert "2\n00:00:02,300 --> 00:00:03,100\nSpeaker 2: Hi Ana.\n\n" in srt
    assert "3\n00:00:03,300 --> 00:00:04,500\nHow are you?\n\n" in srt
    vtt = write("vtt", DIARIZED)
    assert "00:00.100 --> 00:01.900\n<v Speaker 1>Hello there.\n" in vtt
    assert "00:03.300 --> 00:04.500\n<v Speaker 2>How are you?\n" in vtt
    assert write("tsv", DIARIZED).splitlines() == [
        "start\tend\ttext\tspeaker", "0\t1900\tHello there.\tSpeaker 1",
        "2300\t3200\tHi Ana.\tSpeaker 2", "3300\t4500\tHow are you?\tSpeaker 2"]
    data = json.loads(write("json", DIARIZED))
    assert data["speakers"] == [{"id": "S1", "name": "Speaker 1"}, {"id": "S2", "name": "Speaker 2"}]
    assert [s["speaker"] for s in data["segments"]] == ["S1", "S2", "S2"]
    assert [w["speaker"] for w in data["segments"][2]["words"]] == ["S2"] * 3
    assert Transcript.from_dict(data) == DIARIZED


def test_renamed_speakers_appear_in_every_format():
    renamed = DIARIZED.renamed({"S1": "Ana", "S2": "Bo <b> & co"})
    assert write("txt", renamed).startswith("Ana: Hello there.\nBo <b> & co: Hi Ana.\n")
    assert "<v Bo &lt;b&gt; &amp; co>Hi Ana." in write("vtt", renamed)
    assert "\nAna: Hello there.\n" in write("srt", renamed)
    assert write("tsv", renamed).splitlines()[1].endswith("\tAna")
    assert json.loads(write("json", renamed))["speakers"][0] == {"id": "S1", "name": "Ana"}


def test_a_cue_never_spans_two_speakers_when_cues_join_segments():
    from whisper_service.options import SubtitleLayout
    layout = SubtitleLayout(max_line_width=80, max_line_count=2)
    cues = [block.split("\n")[2] for block in write("srt", DIARIZED, layout).strip().split("\n\n")]
    assert cues == ["Speaker 1: Hello there.", "Speaker 2: Hi Ana. How are you?"]


def test_undiarized_output_is_unchanged():
    plain = transcript_of(seg(0, 0.0, 1.0, " Hi."))
    assert "speaker" not in write("json", plain)
    assert write("tsv", plain) == "start\tend\ttext\n0\t1000\tHi.\n"
    assert write("vtt", plain) == "WEBVTT\n\n00:00.000 --> 00:01.000\nHi.\n\n"


# --- options --------------------------------------------------------------------------------------

@pytest.mark.parametrize("values, field, words", [
    ({"diarize": "true", "max_speakers": "0"}, "max_speakers", "must be at least 1; got 0"),
    ({"diarize": "true", "min_speakers": "3", "max_speakers": "2"}, "min_speakers",
     "must not exceed max_speakers"),
    ({"diarize": "true", "num_speakers": "21"}, "num_speakers", "must be at most 20"),
    ({"diarize": "true", "num_speakers": "4", "max_speakers": "3"}, "num_speakers", "between"),
    ({"max_speakers": "2"}, "max_speakers", "needs diarize on"),
    ({"diarize": True, "min_speakers": 1.5}, "min_speakers", "whole number"),
    ({"diarize": "maybe"}, "diarize", "true or false"),
])
def test_bad_speaker_options_name_the_field(values, field, words):
    with pytest.raises(BadOption) as caught:
        TranscribeOptions.from_mapping(values)
    assert caught.value.field == field
    assert words in str(caught.value)


def test_speaker_options_parse():
    options = TranscribeOptions.from_mapping(
        {"diarize": "on", "min_speakers": "2", "max_speakers": 4})
    assert (options.diarize, options.min_speakers, options.max_speakers, options.num_speakers) == (
        True, 2, 4, None)


# --- the pyannote backend says what to set ----------------------------------------------------------

def test_pyannote_not_installed_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(pyannote_backend, "installed", lambda: False)
    with pytest.raises(ModelUnavailable) as caught:
        pyannote_backend.PyannoteDiarizer(str(tmp_path)).diarize(np.zeros(16000, np.float32))
    assert str(caught.value) == (
        "Speaker labels with WHISPER_DIARIZATION=pyannote need the pyannote.audio package, "
        "which is not installed: run `pip install pyannote.audio` on the server, or set "
        "WHISPER_DIARIZATION=embedded for the built-in model.")
    assert caught.value.field == "diarize"


def test_pyannote_without_a_token_says_to_set_hf_token(tmp_path, monkeypatch):
    monkeypatch.setattr(pyannote_backend, "installed", lambda: True)
    for variable in pyannote_backend.TOKEN_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ModelUnavailable) as caught:
        pyannote_backend.PyannoteDiarizer(str(tmp_path)).check()
    assert "need a Hugging Face token" in str(caught.value)
    assert "set HF_TOKEN on the server" in str(caught.value)
    assert "pyannote/speaker-diarization-3.1" in str(caught.value)


# --- with real words: the bundled tiny.en ----------------------------------------------------------

# the batched engine (its word timing is this project's; the sequential engine's is
# openai-whisper's, and the speaker step sees only the transcript either way)
@pytest.mark.parametrize("mode", ["batched"])
def test_real_words_get_the_speaker_who_said_them(mode, service, short_talk, tmp_path):
    path = short_talk.write(tmp_path / "talk.wav")
    options = TranscribeOptions(language="en", beam_size=None, temperature=(0.0,), mode=mode,
                                word_timestamps=True, diarize=True)
    audio = service.decode(str(path))
    words_only = dispatch.transcribe(bundled_model(), audio, options)
    seen = []
    result = service.with_speakers(words_only, audio, options, seen.append)
    assert [s.name for s in result.speakers] == ["Speaker 1", "Speaker 2"]
    assert seen[-1].fraction == 1.0
    # the words inside each reference turn: one speaker each, alternating as the voices do
    expected = {0: "S1", 1: "S2"}
    checked = 0
    for start, end, who in short_talk.turns:
        for segment in result.segments:
            for word in segment.words:
                middle = (word.start + word.end) / 2
                if start + 0.3 < middle < end - 0.3:
                    assert word.speaker == segment.speaker == expected[who], (word, start, end)
                    checked += 1
    assert checked >= 12
    assert "budget" in " ".join(s.text for s in result.segments if s.speaker == "S1").lower()
