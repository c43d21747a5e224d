"""Parsed query documents kept by their text, bounded in number and in size.

A parsed document costs about 600 bytes per token here (a token object each, in a linked list, comments
included), so a query text of ``GRAPHQL_MAX_TOKENS`` 2,000 tokens holds 1.2 MB. Kept by count
alone, 1,024 of them took an API from 202 to 1,399 MB for one client sending distinct texts it knew would
be refused. So documents are weighed by their tokens, and a document is kept only once it has passed
validation: until then it waits in a small trial cache (enough for the checks of one request to share one
parse), and refused documents never push out the working set of the clients that send valid ones.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from graphql import DocumentNode, parse

__all__ = ["CACHED_QUERY_CHARS", "DocumentCache", "tokens"]

KEPT_DOCUMENTS = 1024
KEPT_TOKENS = 64_000  # about 40 MB at most; ~1,000 typical queries (a README query is 27 tokens)
TRIAL_DOCUMENTS = 64
TRIAL_TOKENS = 16_000  # about 10 MB at most
CACHED_QUERY_CHARS = 16_384  # longer query texts are parsed each time, without locations


def tokens(document: DocumentNode) -> int:
    """The tokens ``document`` holds, comments included (1 for a document parsed without locations)."""
    count = 1
    token = document.loc.start_token if document.loc is not None else None
    while token is not None:
        count += 1
        token = token.next
    return count


class _Lru:
    """Documents by text, least recently used out first, at most ``size`` of them and ``budget`` tokens."""

    def __init__(self, size: int, budget: int) -> None:
        self.size = size
        self.budget = budget
        self.held = 0
        self.items: OrderedDict[str, tuple[DocumentNode, int]] = OrderedDict()

    def get(self, text: str) -> DocumentNode | None:
        item = self.items.get(text)
        if item is None:
            return None
        self.items.move_to_end(text)
        return item[0]

    def put(self, text: str, document: DocumentNode, weight: int) -> None:
        self.pop(text)
        if weight > self.budget:
            return
        self.items[text] = (document, weight)
        self.held += weight
        while len(self.items) > self.size or self.held > self.budget:
            _, (_, dropped) = self.items.popitem(last=False)
            self.held -= dropped

    def pop(self, text: str) -> tuple[DocumentNode, int] | None:
        item = self.items.pop(text, None)
        if item is not None:
            self.held -= item[1]
        return item


class DocumentCache:
    """``graphql.parse`` with the token limit, its documents kept per query text (see the module docstring).

    Texts over :data:`CACHED_QUERY_CHARS` characters are parsed each time and without locations: a document
    keeps its source text, so their errors name no line and column. Parse errors are not kept."""

    def __init__(
        self,
        max_tokens: int,
        *,
        kept: tuple[int, int] = (KEPT_DOCUMENTS, KEPT_TOKENS),
        trial: tuple[int, int] = (TRIAL_DOCUMENTS, TRIAL_TOKENS),
    ) -> None:
        self.max_tokens = max_tokens
        self.kept = _Lru(*kept)
        self.trial = _Lru(*trial)
        self.lock = threading.Lock()  # strawberry's sync execute may run beside the event loop

    def __call__(self, text: str) -> DocumentNode:
        if len(text) > CACHED_QUERY_CHARS:
            return parse(text, no_location=True, max_tokens=self.max_tokens)
        with self.lock:
            document = self.kept.get(text) or self.trial.get(text)
        if document is None:
            document = parse(text, max_tokens=self.max_tokens)
            with self.lock:
                self.trial.put(text, document, tokens(document))
        return document

    def valid(self, text: str, document: DocumentNode) -> bool:
        """True when ``document`` is the one kept for ``text``, which passed validation."""
        with self.lock:
            item = self.kept.items.get(text)
        return item is not None and item[0] is document

    def passed(self, text: str, document: DocumentNode) -> None:
        """``document``, parsed here from ``text``, passed validation: keep it."""
        with self.lock:
            item = self.trial.pop(text)
            if item is not None and item[0] is document:
                self.kept.put(text, document, item[1])

    def held(self) -> tuple[int, int]:
        """Documents and tokens kept (trial cache included)."""
        with self.lock:
            return len(self.kept.items) + len(self.trial.items), self.kept.held + self.trial.held
