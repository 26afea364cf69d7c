"""Table and column names by Segment's warehouse rules, fitted to PostgreSQL identifiers.

Segment converts every collection and property name to snake_case with its go-snakecase
package: ASCII letters and digits form words, an upper-case run starts a new word, and
everything else (spaces, dots, dashes, any non-ASCII character) only separates words.
Segment prefixes with ``_`` a name that starts with a digit or is a reserved word (its
Redshift page); here the reserved words are PostgreSQL's, so every name we make can be
written in SQL without quotes. PostgreSQL keeps 63 bytes of an identifier and silently cuts
the rest, so two long names could meet: a longer name keeps its first 54 characters and gets
8 hex digits of a hash of the whole.
"""

from __future__ import annotations

import functools
import hashlib

MAX_IDENTIFIER = 63  # PostgreSQL's NAMEDATALEN - 1, in bytes (our names are ASCII)
_HASH_DIGITS = 8

# PostgreSQL's reserved key words (pg_get_keywords() catcode R and T: neither can be a
# column or table name unquoted), as of PostgreSQL 17.
RESERVED_WORDS = frozenset(
    """
    all analyse analyze and any array as asc asymmetric authorization binary both case
    cast check collate collation column concurrently constraint create cross
    current_catalog current_date current_role current_schema current_time
    current_timestamp current_user default deferrable desc distinct do else end except
    false fetch for foreign freeze from full grant group having ilike in initially inner
    intersect into is isnull join lateral leading left like limit localtime
    localtimestamp natural not notnull null offset on only or order outer overlaps
    placing primary references returning right select session_user similar some
    symmetric system_user table tablesample then to trailing true union unique user
    using variadic verbose when where window with
    """.split()  # noqa: SIM905 - a hundred words read better as text
)


def _lower(c: str) -> bool:
    return "a" <= c <= "z"


def _upper(c: str) -> bool:
    return "A" <= c <= "Z"


def _digit(c: str) -> bool:
    return "0" <= c <= "9"


@functools.lru_cache(maxsize=8192)
def snakecase(name: str) -> str:
    """``name`` in snake_case, word for word as Segment's go-snakecase makes it."""
    n = len(name)
    # A leading stretch already in snake_case is kept as it is: lower-case letters, digits,
    # and single underscores (not first) that a lower-case letter or digit follows.
    i = 0
    seen_lower = seen_underscore = lower_since_underscore = False
    while i < n:
        c = name[i]
        if _lower(c):
            seen_lower = True
            lower_since_underscore = lower_since_underscore or seen_underscore
        elif c == "_" and 0 < i < n - 1 and (_lower(name[i + 1]) or _digit(name[i + 1])):
            seen_underscore, lower_since_underscore = True, False
        elif not _digit(c):
            break
        i += 1
    if i == n:
        return name
    out = list(name[:i])

    def word(j: int) -> int:
        # One word: a run of capitals and digits (lower-cased), then lower-case and digits.
        while j < n and (_upper(name[j]) or _digit(name[j])):
            out.append(name[j].lower())
            j += 1
        while j < n and (_lower(name[j]) or _digit(name[j])):
            out.append(name[j])
            j += 1
        return j

    # Capitals right after that stretch continue its word when it had no lower-case letter
    # yet (``5TEst`` -> ``5test``), or none since its last underscore (``edf_6N``).
    if _upper(name[i]) and (not seen_lower or (seen_underscore and not lower_since_underscore)):
        i = word(i)
    while i < n:
        c = name[i]
        if not (_lower(c) or _upper(c) or _digit(c)):
            i += 1
            continue
        if out:
            out.append("_")
        i = word(i)
    return "".join(out)


@functools.lru_cache(maxsize=8192)
def identifier(name: str) -> str | None:
    """The table or column name for ``name``; None when it has no ASCII letter or digit."""
    snake = snakecase(name)
    if not snake:
        return None
    if _digit(snake[0]) or snake in RESERVED_WORDS:
        snake = "_" + snake
    if len(snake) > MAX_IDENTIFIER:
        digest = hashlib.sha256(snake.encode()).hexdigest()[:_HASH_DIGITS]
        snake = f"{snake[: MAX_IDENTIFIER - _HASH_DIGITS - 1]}_{digest}"
    return snake
