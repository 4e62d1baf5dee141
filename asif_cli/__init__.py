"""The ``asif-index`` command line: one home above the core (``asif_index``) and the database
connectors (``connectors``), so that neither has to know the other's commands."""
