"""Live transcription: audio that arrives while it is spoken, text that follows it.

policy.py   which words of repeated decodes of a growing buffer are final (LocalAgreement-2
            first; the interface lets another, such as AlignAtt, replace it)
"""
