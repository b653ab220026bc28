"""What a SageMaker JumpStart Whisper endpoint's callers send: field names, media types and
the generate() arguments it takes. Both the /invocations view (sagemaker.py) and the
OpenAPI document (openapi.py) read them here, so neither imports the other."""

from whisper_service.queue.jobs import DEFAULT_FILENAME

JUMPSTART_AUDIO_FIELD = "audio_input"  # the upload, hexadecimal, in a JumpStart request
# the media types JumpStart's Whisper endpoints take as a raw body; ffmpeg finds out what
# the bytes really are, so the type only says "this is the file itself"
RAW_TYPES = ("audio/wav", "audio/x-audio", "audio/mpeg", "audio/flac",
             "application/octet-stream")
RAW_FILENAME = DEFAULT_FILENAME  # a raw body has no name; errors call it this
# how SageMaker hands invoke_endpoint's CustomAttributes to the container
ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"

# JumpStart's Hugging Face Whisper endpoints take transformers' generate() arguments.
# num_beams is beam_size here; language, task and temperature are our own option names.
# The others have no counterpart in openai-whisper's decoder (it stops at end-of-text and
# samples by temperature alone), so they are accepted and ignored, and a payload written
# for JumpStart works unchanged. Any other unknown key is refused (400) like everywhere.
JUMPSTART_RENAMED = {"num_beams": "beam_size"}
JUMPSTART_IGNORED = frozenset({
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "do_sample", "top_k",
    "top_p", "early_stopping", "no_repeat_ngram_size", "repetition_penalty",
    "num_return_sequences", "return_timestamps",
})
