"""The `workbench` command line: one entry point over annotation_config, backend and training."""
