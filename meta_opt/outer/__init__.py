"""meta_opt.outer."""
