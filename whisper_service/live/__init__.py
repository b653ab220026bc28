"""Live transcription: audio that arrives while it is spoken, text that follows it.

session.py    a stream's utterances, buffer, prompt and caption events
gate.py       where speech starts and stops (Silero's streaming VAD, frame by frame)
policy.py     which words of repeated decodes of a growing buffer are final (LocalAgreement-2
              first; the interface lets another, such as AlignAtt, replace it)
scheduler.py  one thread decoding every session's due buffer together
labels.py     diarize's speaker labels of ended utterances, on a thread of their own
decoder.py    those batches on the model, before file jobs
encoder.py    their audio features: a short encoder input for tentative decodes
audio.py      PCM frames, resampling to 16 kHz, the recording
"""
