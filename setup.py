"""Packaging for mbt, a group-based peer-to-peer file sharing system on Twisted."""

from setuptools import setup

setup(
    name="mbt",
    version="0.1.0",
    description="Mini-BitTorrent: group-based peer-to-peer file sharing on Twisted",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.9",
    # Explicit lists: flat-layout auto-discovery would refuse the top-level
    # ``twisted`` directory, and the plugin folder must stay namespace-free
    # (no __init__.py) so it is merged into Twisted's own plugin path.
    packages=["mbt", "mbt.protocols", "mbt.tracker", "mbt.peer", "mbt.relay", "mbt.web", "twisted.plugins"],
    package_data={"twisted.plugins": ["mbt_plugins.py"], "mbt.web": ["static/app.js", "static/app.css"]},
    install_requires=["twisted[tls,conch]>=22.10", "service-identity", "pyopenssl", "cryptography"],
    extras_require={
        # psycopg 3 with its binary wheel: trackers over PostgreSQL (--store), and their tests.
        "postgresql": ["psycopg[binary]>=3.1"],
        "test": ["pytest", "pytest-twisted", "hypothesis", "selenium", "psycopg[binary]>=3.1"],
        "bench": ["matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "mbt-tracker = mbt.scripts:tracker_main",
            "mbt-client = mbt.scripts:client_main",
            "mbt-certs = mbt.certs:main",
        ],
    },
)
