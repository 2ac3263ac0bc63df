"""The engine's HTTP path gives it the response body as bytes, which it decodes with ``decode_response``.

``HttpSyncTransport.exchange_json`` returns the body undecoded; what a body cut short by a closed
connection becomes (a transport error to retry) must not change on the way, so it is checked against
a raw socket server that can answer without any framing.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from starkeep_sync import HLCClock, SyncTransportError, WireFormatError, create_http_sync_transport
from starkeep_sync.client.session import create_session
from starkeep_sync.core.engine import response_of
from starkeep_sync.core.wire import MalformedJSONError, SyncExchangeRequest, SyncExchangeResponse, encode_response
from starkeep_sync.device.memory import MemoryDatabaseAdapter

from .test_prefetch import JsonTransport, catch_up, device, metadata


def _make_page() -> SyncExchangeResponse:
    records = metadata(HLCClock("phone", wall_clock=lambda: 1_700_000_000_000), 3)
    return SyncExchangeResponse(records=records, responder_watermarks={"phone": records[-1].updated_at},
                                has_more=True, pending=7)


PAGE = _make_page()  # record ids are random: one page for every comparison


class RawServer:
    """Answers every connection with ``reply`` (status line, headers and body as given), then closes it."""

    def __init__(self) -> None:
        self.reply = b""
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/apps/notes"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def answer(self, body: bytes, *, framed: bool) -> None:
        length = f"Content-Length: {len(body)}\r\n" if framed else ""
        self.reply = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}Connection: close\r\n\r\n"
                      .encode() + body)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                while len(body) < length:
                    body += conn.recv(65536)
                conn.sendall(self.reply)

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def raw() -> Iterator[RawServer]:
    server = RawServer()
    try:
        yield server
    finally:
        server.close()


def transport(server: RawServer) -> Any:
    return create_http_sync_transport(base_url=server.url, session=create_session(retries=0), timeout=5)


@pytest.mark.parametrize("framed", [True, False])
def test_exchange_json_returns_the_body_as_sent_and_it_decodes_to_what_exchange_gives(
    raw: RawServer, framed: bool,
) -> None:
    body = encode_response(PAGE)
    raw.answer(body, framed=framed)
    with transport(raw) as http:
        got = http.exchange_json(SyncExchangeRequest())
        assert isinstance(got, bytes) and got == body
        assert response_of(got) == http.exchange(SyncExchangeRequest()) == PAGE


@pytest.mark.parametrize("cut", [0, 1, 40, -1])
def test_an_unframed_body_cut_short_is_a_transport_error_on_both_paths(raw: RawServer, cut: int) -> None:
    raw.answer(encode_response(PAGE)[:cut], framed=False)
    with transport(raw) as http:
        for call in (http.exchange_json, http.exchange):
            with pytest.raises(SyncTransportError) as info:
                call(SyncExchangeRequest())
            assert info.value.code == "truncated_response"


@pytest.mark.parametrize("framed", [True, False])
def test_a_whole_body_that_is_no_response_is_a_wire_error_from_the_engines_decode(
    raw: RawServer, framed: bool,
) -> None:
    raw.answer(json.dumps({"hasMore": "yes"}).encode(), framed=framed)
    with transport(raw) as http:
        body = http.exchange_json(SyncExchangeRequest())  # JSON, so no transport error
        with pytest.raises(WireFormatError) as via_bytes:
            response_of(body)
        with pytest.raises(WireFormatError) as via_exchange:
            http.exchange(SyncExchangeRequest())
    assert str(via_bytes.value) == str(via_exchange.value)
    assert not isinstance(via_bytes.value, SyncTransportError)


def test_bytes_that_are_not_json_are_malformed_json() -> None:
    with pytest.raises(MalformedJSONError):
        response_of(b"<html>not json</html>")


def test_response_of_takes_bytes_parsed_json_and_a_decoded_response_alike() -> None:
    page = PAGE
    body = encode_response(page)
    assert response_of(body) == response_of(bytearray(body)) == response_of(json.loads(body)) == page
    assert response_of(page) is page


class BytesTransport(JsonTransport):
    """``JsonTransport`` answering as ``HttpSyncTransport`` does: the body as bytes."""

    def exchange_json(self, request: SyncExchangeRequest) -> Any:
        return json.dumps(super().exchange_json(request)).encode()


class DecodedTransport(JsonTransport):
    """Answering an already decoded response, as the ``--node-id`` guard does."""

    def exchange_json(self, request: SyncExchangeRequest) -> Any:
        return SyncExchangeResponse.from_wire(super().exchange_json(request))


@pytest.mark.parametrize("kind", [JsonTransport, BytesTransport, DecodedTransport])
def test_a_catch_up_prefetches_the_same_pages_whatever_form_the_answer_takes(kind: type[JsonTransport]) -> None:
    server_db = MemoryDatabaseAdapter(metadata(HLCClock("phone"), 9) + metadata(HLCClock("tablet"), 8, 100))
    answers = kind(server_db)
    db = MemoryDatabaseAdapter()
    results = catch_up(device(answers, db))

    assert sorted(r.id for r in db.all()) == sorted(r.id for r in server_db.all())
    assert [r.received for r in results] == [4, 4, 4, 4, 1]
    assert [r.pending for r in results] == [13, 9, 5, 1, 0]
    assert any(name.startswith("starkeep-prefetch") for name in answers.threads)
    # Each page asked for once: every prefetch was the request its round would have sent.
    assert len(answers.requests) == len(results)
    assert [r.count_pending for r in answers.requests] == [True, False, False, False, False]
