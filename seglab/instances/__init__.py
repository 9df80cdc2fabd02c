"""Instances: semantic output -> instance label maps (components, watershed, learned separation) and the
instance metrics (DSB score, P/R/F1, AJI, PQ, adapted Rand error)."""
