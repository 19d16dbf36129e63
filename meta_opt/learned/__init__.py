"""meta_opt.learned."""
