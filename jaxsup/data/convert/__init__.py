"""The converter: `python -m jaxsup.data.convert` turns image-text / image-folder data into shards."""
