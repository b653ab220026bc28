"""The one parser of JSON a client sent: HTTP bodies (through the app's JSON provider) and
WebSocket text frames (both live protocols) alike.

A client's JSON is refused with BadJson, a ValueError whose message says why in a few words
("nested too deeply (...)", "not valid JSON (...)", to follow "is"), never a crash: Python's
parser recurses once per level, so a document nested thousands deep would otherwise end in
RecursionError, which nothing between here and the client expects. Nothing the API takes
is nested anywhere near MAX_DEPTH (a Realtime session.update is 5 levels).
"""

from __future__ import annotations

import json
from typing import Any, Union

MAX_DEPTH = 32  # arrays and objects within each other, the outermost counted as 1
TOO_DEEP = f"nested too deeply (more than {MAX_DEPTH} levels of arrays and objects)"


class BadJson(ValueError):
    """JSON a client sent that is not taken; str() says why, without the text itself."""


def parse_client_json(text: Union[str, bytes, bytearray]) -> Any:
    """The value of a client's JSON text (str, or UTF-8/16/32 bytes as json.loads takes
    them); BadJson when it is not JSON or is nested deeper than MAX_DEPTH."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise BadJson(TOO_DEEP) from None
    except ValueError as error:  # JSONDecodeError, bad UTF-8, an integer of 5000 digits
        raise BadJson(f"not valid JSON ({str(error)[:160]})") from None
    if _depth_over(value, MAX_DEPTH):
        raise BadJson(TOO_DEEP)
    return value


def _depth_over(value: Any, limit: int) -> bool:
    """Whether containers nest more than `limit` deep (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))
    return False
