"""Who the servers answer to (serve.http), and CSV cells a spreadsheet will not run."""

from __future__ import annotations

import csv
import io

from starlette.requests import Request

from cropdoc.core.files import csv_row, csv_unescape
from cropdoc.serve.http import allowed_hosts, refusal


def _request(headers: dict) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})


def test_the_names_a_server_answers_to():
    assert set(allowed_hosts("127.0.0.1")) == {"127.0.0.1", "localhost", "::1"}
    loopback = {"::1", "127.0.0.1", "localhost"}
    assert set(allowed_hosts("::1", ["Leaf.local"])) == {*loopback, "leaf.local"}
    assert allowed_hosts("192.168.1.5") == ["192.168.1.5"]
    assert allowed_hosts("0.0.0.0") == ["*"]  # a wildcard's names cannot be known
    assert allowed_hosts("0.0.0.0", ["farm.example"]) == ["farm.example"]


def test_refusals_name_the_foreign_host_or_origin():
    names = allowed_hosts("127.0.0.1")
    assert refusal(_request({"Host": "127.0.0.1:8000"}), names) is None
    assert refusal(_request({"Host": "[::1]:8000", "Origin": "http://[::1]:8000"}), names) is None
    assert "evil.example" in refusal(_request({"Host": "evil.example:8000"}), names)
    foreign = {"Host": "127.0.0.1:8000", "Origin": "http://evil.example"}
    assert "other sites" in refusal(_request(foreign), names)
    for origin in ("null", "http://127.0.0.1:9000", "file://", "http://localhost:8000"):
        assert refusal(_request({"Host": "127.0.0.1:8000", "Origin": origin}), names)
    assert refusal(_request({"Host": "anything:1"}), ["*"]) is None


def test_csv_cells_that_look_like_formulas_are_neutralised_and_read_back():
    cells = ['=HYPERLINK("http://x")', "+1+2", "@SUM(A1)", "-cmd", "\tx", "blast", "-5", "3.5"]
    out = io.StringIO()
    csv.writer(out).writerow(csv_row(cells))
    written = next(csv.reader(io.StringIO(out.getvalue())))
    assert all(not w.startswith(("=", "+", "@", "\t")) for w in written)
    assert written[3] == "'-cmd" and written[5:] == ["blast", "-5", "3.5"]
    assert [csv_unescape(w) for w in written] == cells
