"""Small DCLS ConvNeXt for 28x28 inputs (filled in by the quickstart work)."""
