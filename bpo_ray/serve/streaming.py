"""A reply as it is written: the text pieces a backend hands to `ChatRequest.on_text`, then the
finished `ChatResult`, as one async iterator a server turns into server-sent events
(`openai_api.to_chunk_events`).

The request still goes through the replica's batch (`serve.batch`), so streaming and
non-streaming requests share `generate` calls; only the text comes back early.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from bpo_ray.models.base import ChatRequest, ChatResult

TextPiece = tuple[int, str]
"""(choice index, new text)."""


async def stream_reply(answer: Callable[[ChatRequest], Awaitable[ChatResult]],
                       request: ChatRequest) -> AsyncIterator[TextPiece | ChatResult]:
    """Run `answer(request)` and yield its text pieces as the backend writes them, then the
    result (last, always). Backends call `on_text` from their worker thread, hence the hop
    onto this event loop."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[TextPiece] = asyncio.Queue()
    listening = True

    def on_text(choice: int, text: str) -> None:
        if listening:
            loop.call_soon_threadsafe(pieces.put_nowait, (choice, text))

    request.on_text = on_text
    done = asyncio.ensure_future(answer(request))
    try:
        while not done.done():
            piece = asyncio.ensure_future(pieces.get())
            await asyncio.wait({piece, done}, return_when=asyncio.FIRST_COMPLETED)
            if piece.done():
                yield piece.result()
            else:
                piece.cancel()
        # Pieces scheduled before the result landed are still queued: they come first.
        while not pieces.empty():
            yield pieces.get_nowait()
        yield done.result()
    finally:
        # A client that went away: the batch goes on for the others; its text goes nowhere.
        listening = False


async def started(pieces: AsyncIterator[TextPiece | ChatResult],
                  check: Callable[[ChatResult], None]) -> AsyncIterator[TextPiece | ChatResult]:
    """Wait for the first piece, so that a reply failing before it wrote anything still gets an
    HTTP error status (`check(result)` raises it), and hand back the whole stream. A failure
    later (a replica lost mid-reply) ends the stream with a failed, retryable result."""
    first: TextPiece | ChatResult = await anext(aiter(pieces), ChatResult(error="the reply ended early"))
    if isinstance(first, ChatResult):
        check(first)

    async def whole() -> AsyncIterator[TextPiece | ChatResult]:
        yield first
        try:
            async for piece in pieces:
                yield piece
        except Exception as exc:
            yield ChatResult(error=f"{type(exc).__name__}: {exc}", retryable=True)

    return whole()
