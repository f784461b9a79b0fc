"""docs/openapi.json is the service's OpenAPI document, and docs/protocol.md covers every route."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
REGENERATE = (
    'python -c "import json; from langchain_specsteer.tiny import tiny_pair; '
    "from langchain_specsteer.server import VerifierService, create_app; s, g = tiny_pair(); "
    "open('docs/openapi.json', 'w').write(json.dumps(create_app(VerifierService(g, "
    "public_specialist=s)).openapi(), indent=2) + '\\n')\""
)


@pytest.fixture(scope="module")
def openapi(specialist, generalist):
    """The OpenAPI document of the app on the tiny models, as JSON would carry it."""
    from langchain_specsteer.server import VerifierService, create_app

    app = create_app(VerifierService(generalist, public_specialist=specialist))
    return json.loads(json.dumps(app.openapi()))


def test_committed_openapi_document_is_current(openapi):
    committed = json.loads((DOCS / "openapi.json").read_text(encoding="utf-8"))
    assert committed == openapi, (
        "docs/openapi.json is stale; regenerate it from the repository root with\n" + REGENERATE
    )


def test_protocol_doc_names_every_endpoint(openapi):
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    routes = [
        f"{method.upper()} {path}"
        for path, operations in openapi["paths"].items()
        for method in operations
    ]
    assert len(routes) >= 8
    missing = [route for route in routes if route not in text]
    assert not missing, f"docs/protocol.md does not mention {missing}"
