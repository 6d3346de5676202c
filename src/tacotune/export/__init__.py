"""Export a voice for onnxruntime and run it (`tacotune export VOICE --format onnx -o DIR`).

    graphs.py       the ONNX graphs: wrappers around the model's own code (torch)
    exporter.py     `export_voice`: checkpoint, run or registry reference -> DIR (torch)
    bundle.py       DIR/manifest.json: contents and checksums, `ExportError`
    readme.py       DIR/README.md
    runtime.py      `OnnxVoice`: the decoding loop in numpy + onnxruntime (no torch)
    synthesizer.py  `OnnxSynthesizer`: `Synthesizer`'s API on top of `OnnxVoice`

The package itself imports nothing, so `tacotune.export.runtime` works without torch.
"""
