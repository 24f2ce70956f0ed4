"""The Serve application builder, resources/pools, runtime and the `myriad` CLI."""
