"""Audio + options + loaded model -> Transcript: dispatch.py picks the engine for a request
(sequential.py, openai-whisper's own algorithm; batched.py, speech windows decoded in
batches through decoding/), vad.py finds the speech, pipeline.py times the stages and
prepares the next batch, window_progress.py tells how far a window's decode has come."""
