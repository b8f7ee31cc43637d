"""Build of the optional compiled encoder; every other setting is in pyproject.toml.

`bridge/hstream/_structenc.c` makes JSON records about 10x cheaper to encode. It is optional: when
it cannot be compiled (no C compiler or Python headers), setuptools prints a warning and the
package installs with `bridge/hstream/structenc.py`'s pure-Python encoder, which writes the same
bytes.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "bridge.hstream._structenc",
            sources=["bridge/hstream/_structenc.c"],
            optional=True,
        )
    ]
)
