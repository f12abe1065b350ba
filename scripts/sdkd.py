"""A1111/Forge entry point: everything lives in the sdkd_ext package."""

from sdkd_ext.hosts import a1111

a1111.register()
