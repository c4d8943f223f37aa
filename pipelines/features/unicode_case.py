"""``lower`` and ``upper`` as Spark 4.3 computes them, in Python (the online side of the two functions)."""

from __future__ import annotations

from functools import lru_cache

# Spark 4.3 case-maps with ICU (Unicode 16); Python 3.11's str.lower/upper know Unicode 14. These are all the
# code points where the two differ (found by mapping every code point in both); the Python side adds them.
_LOWER_EXTRA = {0x1C89: 0x1C8A, 0xA7CB: 0x0264, 0xA7CC: 0xA7CD, 0xA7CE: 0xA7CF, 0xA7D2: 0xA7D3, 0xA7D4: 0xA7D5,
                0xA7DA: 0xA7DB, 0xA7DC: 0x019B,
                **{c: c + 0x20 for c in range(0x10D50, 0x10D66)},
                **{c: c + 0x1B for c in range(0x16EA0, 0x16EB9)}}
_UPPER_EXTRA = {v: k for k, v in _LOWER_EXTRA.items()}
# Lowercasing a capital sigma depends on its neighbours (Unicode's Final_Sigma: a cased letter before it, none
# after it, case-ignorable characters skipped): these are the code points whose class for that rule differs
# between ICU's Unicode 16 and Python 3.11 ("c" cased, "i" case-ignorable, "n" neither), found like the
# table above by lowercasing "A<c>Σ" and "1<c>Σ" for every code point in both.
_SIGMA_CLASS_RANGES = [
    (0x295, 0x295, "n"), (0x897, 0x897, "i"), (0xECE, 0xECE, "i"), (0x1ACF, 0x1ADD, "i"), (0x1AE0, 0x1AEB, "i"),
    (0x1C89, 0x1C8A, "c"), (0xA7CB, 0xA7CF, "c"), (0xA7D2, 0xA7D2, "c"), (0xA7D4, 0xA7D4, "c"),
    (0xA7DA, 0xA7DC, "c"), (0xA7F1, 0xA7F1, "i"), (0x10D4E, 0x10D4E, "i"), (0x10D50, 0x10D65, "c"),
    (0x10D69, 0x10D6D, "i"), (0x10D6F, 0x10D6F, "i"), (0x10D70, 0x10D85, "c"), (0x10EC5, 0x10EC5, "i"),
    (0x10EFA, 0x10EFF, "i"), (0x11241, 0x11241, "i"), (0x113BB, 0x113C0, "i"), (0x113CE, 0x113CE, "i"),
    (0x113D0, 0x113D0, "i"), (0x113D2, 0x113D2, "i"), (0x113E1, 0x113E2, "i"), (0x1171E, 0x1171E, "n"),
    (0x11B60, 0x11B60, "i"), (0x11B62, 0x11B64, "i"), (0x11B66, 0x11B66, "i"), (0x11DD9, 0x11DD9, "i"),
    (0x11F00, 0x11F01, "i"), (0x11F36, 0x11F3A, "i"), (0x11F40, 0x11F40, "i"), (0x11F42, 0x11F42, "i"),
    (0x11F5A, 0x11F5A, "i"), (0x13439, 0x13440, "i"), (0x13447, 0x13455, "i"), (0x1611E, 0x16129, "i"),
    (0x1612D, 0x1612F, "i"), (0x16D40, 0x16D42, "i"), (0x16D6B, 0x16D6C, "i"), (0x16EA0, 0x16EB8, "c"),
    (0x16EBB, 0x16ED3, "c"), (0x16FF2, 0x16FF3, "i"), (0x1DF25, 0x1DF2A, "c"), (0x1E030, 0x1E06D, "i"),
    (0x1E08F, 0x1E08F, "i"), (0x1E4EB, 0x1E4EF, "i"), (0x1E5EE, 0x1E5EF, "i"), (0x1E6E3, 0x1E6E3, "i"),
    (0x1E6E6, 0x1E6E6, "i"), (0x1E6EE, 0x1E6EF, "i"), (0x1E6F5, 0x1E6F5, "i"), (0x1E6FF, 0x1E6FF, "i"),
]
_SIGMA_CLASS = {chr(c): k for a, b, k in _SIGMA_CLASS_RANGES for c in range(a, b + 1)}
_SIGMA_CONTEXT = frozenset(_SIGMA_CLASS)
CAPITAL_SIGMA, SMALL_SIGMA, FINAL_SIGMA = "\u03a3", "\u03c3", "\u03c2"


@lru_cache(maxsize=4096)
def _sigma_class(ch: str) -> str:
    k = _SIGMA_CLASS.get(ch)
    if k is not None:
        return k
    if ("1" + ch + CAPITAL_SIGMA).lower()[-1] == FINAL_SIGMA:  # Python's own class, by the same probes
        return "c"
    return "i" if ("A" + ch + CAPITAL_SIGMA).lower()[-1] == FINAL_SIGMA else "n"


def _is_final_sigma(s: str, i: int) -> bool:
    j = i - 1
    while j >= 0 and _sigma_class(s[j]) == "i":
        j -= 1
    if j < 0 or _sigma_class(s[j]) != "c":
        return False
    j = i + 1
    while j < len(s) and _sigma_class(s[j]) == "i":
        j += 1
    return j == len(s) or _sigma_class(s[j]) != "c"


def spark_lower(s: str) -> str:
    """``lower`` as Spark 4.3 (ICU, Unicode 16) computes it."""
    if s.isascii():
        return s.lower()
    if CAPITAL_SIGMA in s and not _SIGMA_CONTEXT.isdisjoint(s):
        # Only the capital sigma is context-dependent: map the rest character by character.
        s = "".join((FINAL_SIGMA if _is_final_sigma(s, i) else SMALL_SIGMA) if ch == CAPITAL_SIGMA else ch.lower()
                    for i, ch in enumerate(s))
        return s.translate(_LOWER_EXTRA)
    return s.lower().translate(_LOWER_EXTRA)


def spark_upper(s: str) -> str:
    """``upper`` as Spark 4.3 computes it (no context rules)."""
    return s.upper() if s.isascii() else s.upper().translate(_UPPER_EXTRA)
