-- one database per member: a member's data never shares a database with another's
CREATE DATABASE oem OWNER qdspace;
CREATE DATABASE supplier_a OWNER qdspace;
CREATE DATABASE supplier_b OWNER qdspace;
