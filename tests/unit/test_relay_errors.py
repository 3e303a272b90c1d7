"""How a worker's error reaches the client: as the hierarchy's error, in the client's terms."""

from lorafleet.core.errors import EngineRejected, ModelNotFound, UpstreamError
from lorafleet.gateway.openai.relay import engine_error


def test_an_upstream_404_is_answered_in_the_clients_terms():
    error = engine_error(404, b'{"error": {"message": "The model `adp_abc` does not exist."}}', "support-bot")
    assert isinstance(error, ModelNotFound) and error.status_code == 404
    assert "adp_abc" not in str(error.envelope()) and "support-bot" in error.message
    assert error.code == "model_not_found"


def test_the_engines_refusal_keeps_its_message_and_param():
    error = engine_error(400, b'{"error": {"message": "max_tokens too large", "param": "max_tokens"}}', "m")
    assert isinstance(error, EngineRejected) and (error.status_code, error.param) == (400, "max_tokens")
    assert error.message == "max_tokens too large"
    assert error.code is None, "the engine said why in words; a code only where OpenAI has one"
    past = engine_error(400, b'{"error": {"message": "This model\'s maximum context length is 2048 tokens. However, '
                             b'your request has 3000 input tokens.", "code": 400}}', "m")
    assert past.code == "context_length_exceeded"


def test_a_workers_own_failure_is_a_502_that_says_nothing_of_it():
    error = engine_error(500, b"Traceback (most recent call last): secret internals", "m")
    assert isinstance(error, UpstreamError) and error.status_code == 502 and "internals" not in error.message
    assert engine_error(401, b'{"error": {"message": "bad internal token"}}', "m").status_code == 502
