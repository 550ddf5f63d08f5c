"""Architectures (a registry of decorated builders) and self-describing checkpoints.

Example::

    from ferkit.models import create_model, list_models, load_checkpoint
    model = create_model("vgg", num_classes=7, image_size=48, width=48)
    model, record = load_checkpoint("runs/exp1")       # record.input: the model's input contract
    m = open_model("runs/exp1")                         # or a bundled name, .safetensors, .onnx: the one way
    probs = m.probabilities(faces_uint8, tta="flip")    # to open a model for inference (ferkit.models.opened)
"""
from . import classifiers, students  # noqa: F401  (registers the built-in architectures)
from .opened import OnnxModel, OpenedModel, TorchModel, find_model, model_file, open_model
from .record import (
    CHECKPOINT_FORMAT,
    DECODING,
    FORMAT_VERSION,
    CheckpointRecord,
    InputSpec,
    init_from_checkpoint,
    load_checkpoint,
    read_checkpoint_record,
    resolve_checkpoint,
    save_checkpoint,
)
from .registry import (
    count_parameters,
    create_model,
    get_model_entry,
    list_models,
    parse_model_args,
    register_model,
    resolve_model_args,
)


def list_models_info() -> dict:
    """Registered architectures (name, summary, arguments with defaults, minimum image size) and the
    bundled models (name, kind, file, classes, image size, whether present; a generator's card
    fields), for ``ferkit models``."""
    from ..bundled import BUNDLED

    archs = [{"name": n, "summary": get_model_entry(n).summary(), "arguments": get_model_entry(n).defaults(),
              "min_image_size": get_model_entry(n).min_image_size} for n in list_models()]
    bundled = []
    for b in BUNDLED.values():
        entry = {"name": b.name, "kind": b.kind, "summary": b.summary, "card": b.card, "path": str(b.path),
                 "available": b.path.is_file()}
        if entry["available"]:
            rec = read_checkpoint_record(b.path)
            entry.update(arch=rec.arch, model_args=rec.model_args, classes=list(rec.classes),
                         image_size=rec.image_size, size_mb=b.path.stat().st_size / 1e6, val_metrics=rec.val_metrics,
                         temperature=rec.temperature, temperature_per_domain=rec.domain_temperature.get("domains", []))
            if b.kind == "generator":   # the card fields scripts/bundle_generator.py wrote into the record
                entry["bundled"] = rec.extra.get("bundled", {})
        bundled.append(entry)
    return {"architectures": archs, "bundled": bundled}


def models_text(info: dict) -> str:
    """What ``ferkit models`` prints about :func:`list_models_info`'s ``info``: a table in words."""
    from ..choices import show_value

    lines = ["architectures (ferkit train --arch NAME [--model-arg NAME=VALUE ...]):"]
    for m in info["architectures"]:
        args = ", ".join(f"{k}={show_value(v)}" for k, v in m["arguments"].items()) or "no arguments"
        lines.append(f"  {m['name']:8s} {m['summary']}\n"
                     f"           arguments: {args}; minimum image size {m['min_image_size']}")
    heads = {"classifier": "bundled models (ferkit predict [--model NAME], ferkit train --init NAME; the first is "
                           "the default):",
             "generator": "bundled generators (ferkit synth edit NAME --source DIR --out DIR --per-class N):"}
    for kind, head in heads.items():
        lines.append(head)
        for b in (b for b in info["bundled"] if b.get("kind", "classifier") == kind):
            status = (f"{b['arch']}, {len(b['classes'])} classes ({', '.join(b['classes'])}), {b['image_size']} px, "
                      f"{b['size_mb']:.1f} MB" if b["available"] else "not in this installation")
            if b["available"] and b.get("bundled", {}).get("iterations"):
                status += f", {b['bundled']['iterations']:,} iterations"
            lines.append(f"  {b['name']}: {b['summary']}\n           {status}; card: {b['card']}")
    return "\n".join(lines)


__all__ = ["list_models_info", "models_text",
           "OnnxModel", "OpenedModel", "TorchModel", "find_model", "model_file", "open_model",
           "CHECKPOINT_FORMAT", "DECODING", "FORMAT_VERSION", "CheckpointRecord", "InputSpec", "count_parameters",
           "create_model", "get_model_entry", "init_from_checkpoint", "list_models", "load_checkpoint",
           "parse_model_args", "read_checkpoint_record", "register_model", "resolve_checkpoint", "resolve_model_args",
           "save_checkpoint"]
