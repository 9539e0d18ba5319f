"""Model library compilation (imports TVM only inside functions).

- `build.build_model_lib(chat_config, target, options, out_dir)`: mlc-chat-config.json → lib.<suffix>
- `pipeline.build_pipeline`: the Relax pipeline (fusion, dlight schedules, memory plan, _metadata)
- `fusion`: NT_matmul rewrite and dequantize→matmul fusion
- `cuda`: nvcc ahead-of-time compilation of CUDA device code into the exported library
- `metadata`: the `_metadata` JSON and the architecture view that keys compile
"""
