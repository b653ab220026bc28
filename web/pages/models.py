"""The Models page: the models this server offers, a form that starts a fine-tune from an
uploaded dataset archive, the fine-tunes running (step, loss, WER, time left, their curve)
and finished (the held-out error rates before and after, "Try it" on the upload page).
The work is whisper_service/queue/finetunes.py's, as for the API."""

from __future__ import annotations

from typing import List, Sequence, Tuple

from flask import Blueprint, current_app, redirect, render_template, request, url_for

from web.api.finetunes import DATASET_FIELD, fine_tunes
from web.http.signin import require_web_access
from whisper_service.errors import BadOption, ServiceError

blueprint = Blueprint("models_page", __name__)
blueprint.before_request(require_web_access)

CURVE_WIDTH, CURVE_HEIGHT = 320, 90  # the curves' drawing, in SVG units
FORM_FIELDS = ("max_steps", "epochs", "learning_rate", "language", "method")  # besides model, name
# the form's methods (training/lora.py's METHODS, whose module imports torch: not at import)
METHODS = (("auto", "Automatic: LoRA from small up, full below"), ("full", "Full: every weight"),
           ("lora", "LoRA: adapters, merged when saved"))


@blueprint.get("/models")
def models():
    return models_page()


@blueprint.post("/models")
def start_fine_tune():
    archive = request.files.get(DATASET_FIELD)
    try:
        if archive is None or not archive.filename:
            raise BadOption(DATASET_FIELD, "Choose the dataset archive: a zip of the clips with a "
                                           ".csv table (audio, text) or a Common Voice folder.")
        fields = {k: v for k, v in request.form.items() if k in FORM_FIELDS and v.strip()}
        fine_tunes().submit(archive.stream, request.form.get("model"), request.form.get("name"),
                            fields)
    except ServiceError as error:
        return models_page(error=str(error), form=request.form, status=400)
    return redirect(url_for(".models"), 303)


def models_page(error: str = "", form=None, status: int = 200):
    registry = current_app.extensions["whisper_service"].models
    states = list(reversed(fine_tunes().list()))
    running = [s for s in states if s["state"] in ("queued", "running")]
    return render_template(
        "models.html", served=[(name, registry.label(name)) for name in registry.allowed],
        default_model=registry.default, running=running,
        finished=[s for s in states if s["state"] not in ("queued", "running")],
        error=error, form=form or {}, methods=METHODS, curve=curve, size=(CURVE_WIDTH, CURVE_HEIGHT),
    ), status


def curve(points: Sequence[Sequence[float]]) -> str:
    """(step, value) points as an SVG polyline's points, scaled into the drawing."""
    if not points:
        return ""
    steps = [p[0] for p in points]
    values = [p[1] for p in points]
    low_step, high_step = min(steps), max(max(steps), min(steps) + 1)
    high = max(max(values), 1e-9)
    scaled: List[Tuple[float, float]] = [
        ((s - low_step) / (high_step - low_step) * CURVE_WIDTH,
         CURVE_HEIGHT - v / high * CURVE_HEIGHT) for s, v in zip(steps, values)]
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in scaled)
