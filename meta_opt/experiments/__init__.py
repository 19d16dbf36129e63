"""meta_opt.experiments."""
