"""CI fan-out: a recipe's nodes grouped into matrix cells (one per target variant, plus `weights`),
each with the runner it needs, the command that builds it and the artifacts it produces."""
