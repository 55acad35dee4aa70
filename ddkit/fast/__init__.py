"""The same computation, faster: compile, channels-last and mixed precision, CUDA graphs, several
networks trained at once, compact image storage, data-parallel sharding.

Science: imports the contract modules and core only.
"""
