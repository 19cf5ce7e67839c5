"""Public checkpoints in and out: pure NumPy transforms between other projects'
state dicts and jaxsup parameter trees (flat "a/b/c" keys).

    flat = files.read_arrays("open_clip_model.safetensors")     # {name: np.ndarray}
    params = convert.import_params("open_clip", flat, heads)     # jaxsup two-tower tree
    convert.export_params("open_clip", params)                   # back to open_clip names

Layers: this package imports only jaxsup.errors (and NumPy; torch lazily, for
.pt/.bin files). Building models and checking against them is the caller's job
(jaxsup.eval, jaxsup.export).
"""
