"""How a worker's error reaches the client."""

from lorafleet.gateway.openai.relay import _upstream_error_envelope


def test_an_upstream_404_is_answered_in_the_clients_terms():
    status, envelope = _upstream_error_envelope(
        404, b'{"error": {"message": "The model `adp_abc` does not exist."}}', "support-bot")
    assert status == 404 and "adp_abc" not in str(envelope)
    assert envelope["error"]["code"] == "model_not_found" and "support-bot" in envelope["error"]["message"]
    status, envelope = _upstream_error_envelope(400, b'{"error": {"message": "max_tokens too large", "param": "max_tokens"}}', "m")
    assert (status, envelope["error"]["param"]) == (400, "max_tokens")
    status, envelope = _upstream_error_envelope(500, b"Internal Server Error", "m")
    assert status == 502 and envelope["error"]["code"] == "upstream_error"
