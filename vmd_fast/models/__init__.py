"""Networks of the zoo: the style-based generator, the attribute editor, CLIP and the
target models to diagnose. Load trained ones with :func:`vmd_fast.zoo.load`."""
