"""Segment's warehouse schema, built from queued messages: names, types and rows.

Framework- and driver-free: :mod:`.naming` turns event and property names into table and
column names, :mod:`.types` infers column types and fits values to existing columns, and
:mod:`.schema` lays a message out as rows of Segment's tables. The PostgreSQL destination
(:mod:`segment_mw.destinations.postgres`) writes those rows.
"""
