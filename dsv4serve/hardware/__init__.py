"""The GPUs: NVML inventory, the catalog of known GPUs and declared inventories, `--gpus` selection."""
