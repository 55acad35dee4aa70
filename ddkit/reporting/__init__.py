"""`ddkit report`: every result.json -> one table of rows -> paper tables, text, figures.
"""
