"""Fine-tunes over HTTP: POST /api/v1/fine-tunes (a dataset archive, the base model, a name,
options) answers 202 with the fine-tune; GET /api/v1/fine-tunes lists them, GET
/api/v1/fine-tunes/<id> gives state, step, loss, WER and time left; DELETE cancels. The work
is whisper_service/queue/finetunes.py's; errors are rendered by web/http/errors.py."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request, url_for
from werkzeug.exceptions import NotFound

from web.http.auth import require_api_key
from whisper_service.errors import BadOption
from whisper_service.queue.finetunes import FineTunes

blueprint = Blueprint("fine_tunes", __name__, url_prefix="/api/v1")
blueprint.before_request(require_api_key)

EXTENSION = "whisper_finetunes"
DATASET_FIELD = "dataset"  # the archive in the multipart request


def fine_tunes() -> FineTunes:
    return current_app.extensions[EXTENSION]


@blueprint.post("/fine-tunes")
def create_fine_tune():
    archive = request.files.get(DATASET_FIELD)
    if archive is None:
        raise BadOption(DATASET_FIELD, "attach the dataset as 'dataset': a zip of the clips with "
                                       "a .csv / .jsonl table (audio, text) or a Common Voice folder")
    state = fine_tunes().submit(archive.stream, request.form.get("model"), request.form.get("name"),
                                request.form)
    return jsonify(state), 202, {"Location": url_for(".fine_tune_status", fine_tune_id=state["id"])}


@blueprint.get("/fine-tunes")
def list_fine_tunes():
    return jsonify({"fine_tunes": fine_tunes().list()})


@blueprint.get("/fine-tunes/<fine_tune_id>")
def fine_tune_status(fine_tune_id: str):
    return jsonify(_found(fine_tunes().get(fine_tune_id)))


@blueprint.delete("/fine-tunes/<fine_tune_id>")
def cancel_fine_tune(fine_tune_id: str):
    return jsonify(_found(fine_tunes().cancel(fine_tune_id))), 202


def _found(state):
    if state is None:
        raise NotFound("There is no such fine-tune.")
    return state
