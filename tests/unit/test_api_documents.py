"""The API's parsed-document cache: it keeps what passed validation, and stays bounded whatever is sent."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import pytest
from graphql import parse

from cryptostream.settings import load_settings
from graphql_api.documents import CACHED_QUERY_CHARS, TRIAL_TOKENS, DocumentCache, tokens
from graphql_api.schema import build_schema

MB = 1 << 20


def _schema_and_documents() -> tuple[object, DocumentCache]:
    schema = build_schema(load_settings(database_url=None))
    documents = schema.parse  # type: ignore[attr-defined]
    assert isinstance(documents, DocumentCache)
    return schema, documents


def _refused(i: int) -> str:
    """A distinct ~16 KB text of ~2,000 tokens that parses and that validation refuses (too many fields)."""
    return "{" + f"n{i} " + "x " * 1_990 + "}"


def test_long_query_texts_are_not_kept_with_their_source() -> None:
    """Comments count as no token: 1,024 queries of 900 KB of comment each were cached, each document
    holding its source text (1.8 GB from one client). Long texts are parsed each time, without locations."""
    documents = DocumentCache(max_tokens=2000)
    long = "#" + "x" * CACHED_QUERY_CHARS + "\n{ symbols }"
    first, second = documents(long), documents(long)
    assert first is not second and first.loc is None and second.loc is None
    assert first == second  # the same document
    assert documents.held() == (0, 0)


def test_a_document_is_kept_once_it_passes_validation_and_not_validated_again() -> None:
    schema, documents = _schema_and_documents()
    text = "{ a: __typename b: __typename }"
    first = asyncio.run(schema.execute(text))  # type: ignore[attr-defined]
    assert first.errors is None and first.data == {"a": "Query", "b": "Query"}
    kept = documents(text)
    assert documents.valid(text, kept)
    assert documents(text) is kept  # not parsed again
    again = asyncio.run(schema.execute(text))  # type: ignore[attr-defined]
    assert again.errors is None and again.data == first.data
    assert documents(text) is kept


def test_refused_documents_are_not_kept_and_never_push_out_valid_ones() -> None:
    schema, documents = _schema_and_documents()
    valid = "{ __typename }"
    assert asyncio.run(schema.execute(valid)).errors is None  # type: ignore[attr-defined]
    kept = documents(valid)
    for i in range(40):
        result = asyncio.run(schema.execute(_refused(i)))  # type: ignore[attr-defined]
        assert result.errors and "fields found. Allowed: 500" in result.errors[0].message
        assert not documents.valid(_refused(i), documents(_refused(i)))
    held, held_tokens = documents.held()
    assert held_tokens <= TRIAL_TOKENS + tokens(kept)  # the refused ones only ever in the trial cache
    assert documents(valid) is kept and documents.valid(valid, kept)
    # a refused text is refused again with the same message (validated again: nothing kept says otherwise)
    again = asyncio.run(schema.execute(_refused(0)))  # type: ignore[attr-defined]
    assert again.errors and "fields found. Allowed: 500" in again.errors[0].message


@pytest.mark.parametrize("kind", ["refused", "valid"])
def test_memory_stays_bounded_whatever_texts_one_client_sends(kind: str) -> None:
    """The API review: 1,200 distinct refused 16 KB texts took an API from 202 to 1,399 MB (each document
    ~1.17 MB, kept by the parse cache and again by the validation cache). 80 here would hold ~95 MB."""
    schema, documents = _schema_and_documents()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(80):
            if kind == "refused":
                text = _refused(i)
            else:  # valid and as heavy as the token limit allows (comments are tokens too)
                text = f"#{i}\n" + "#\n" * 1_980 + "{ __typename }"
            result = asyncio.run(schema.execute(text))  # type: ignore[attr-defined]
            assert bool(result.errors) == (kind == "refused"), result.errors
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    held, held_tokens = documents.held()
    assert grown < 30 * MB, f"{grown / MB:.0f} MB kept by {held} documents of {held_tokens} tokens"


def test_the_cache_is_bounded_in_documents_and_in_tokens() -> None:
    documents = DocumentCache(max_tokens=2000, kept=(3, 100), trial=(2, 50))
    texts = [f"{{ a{i}: symbols }}" for i in range(6)]  # 7 tokens each with the start and end
    for text in texts:
        documents.passed(text, documents(text))
    assert documents.held() == (3, 3 * tokens(parse(texts[0])))
    assert [documents.valid(t, documents.kept.items[t][0]) for t in texts[3:]] == [True] * 3
    assert all(t not in documents.kept.items for t in texts[:3])  # least recently used out first
    big = "{" + "symbols " * 60 + "}"  # over the trial budget alone: parsed, never held
    assert documents(big) is not documents(big)
    documents.passed(big, documents(big))
    assert big not in documents.kept.items
    assert documents.held()[1] <= 100 + 50
