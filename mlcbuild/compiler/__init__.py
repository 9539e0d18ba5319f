"""Model library compilation (imports TVM only inside functions; `cpu_schedule` at module level,
reached only through `pipeline.cpu_schedule_rules`).

- `build.build_model_lib(chat_config, target, options, out_dir)`: mlc-chat-config.json → lib.<suffix>
- `pipeline.build_pipeline`: the Relax pipeline (fusion, dlight schedules, memory plan, _metadata);
  `pipeline.schedule_passes`: its first part, up to scheduled kernels (to inspect their TIR)
- `cpu_schedule`: mlcbuild's llvm schedule rules (parallel, vectorized matmul/GEMV; injective)
- `fusion`: NT_matmul rewrite and dequantize→matmul fusion
- `cuda`: nvcc ahead-of-time compilation of CUDA device code into the exported library
- `metadata`: the `_metadata` JSON and the architecture view that keys compile
"""
