"""Zoo recipes: every module here registers its recipes with :func:`vmd_fast.zoo.register`
when imported (:func:`vmd_fast.zoo.recipes` imports them all)."""
