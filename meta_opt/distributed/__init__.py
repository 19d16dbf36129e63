"""meta_opt.distributed."""
