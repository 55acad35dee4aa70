"""Many runs: sweeps over parameter grids (papermill, local or Dask), `ddkit run` under torchrun,
`ddkit reproduce`.
"""
