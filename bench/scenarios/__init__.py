"""One module per scenario of issue 5; each has `run(ctx) -> dict` (the JSON it contributes)."""
