"""Neutralising text from the sandbox (or the model) before it reaches a terminal.

Generated code is attacker-controlled: what it prints could carry terminal escape sequences (OSC 0
window titles, OSC 52 clipboard writes, cursor movement that hides lines) or bidirectional-text
overrides. ``for_terminal`` makes every such character visible as an escape instead.
"""

from __future__ import annotations

__all__ = ["for_terminal"]

_KEEP = {"\n", "\t"}
_BIDI = [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C]
_TABLE: dict[int, str] = {
    code: f"\\x{code:02x}"
    for code in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]
    if chr(code) not in _KEEP
}
_TABLE.update({code: f"\\u{code:04x}" for code in _BIDI})


def for_terminal(text: str) -> str:
    """``text`` with control characters (ESC, BEL, CR, C1 controls, ...) and bidi overrides
    written as visible escapes; newlines and tabs kept."""
    return text.translate(_TABLE)
