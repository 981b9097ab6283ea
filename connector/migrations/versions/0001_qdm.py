"""QDM tables: orders, products, batches and genealogy, inspections, measurements,
environment readings and operator logs.

Revision ID: 0001_qdm
Revises: 
Create Date: 2026-11-25 11:28:35.970123
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0001_qdm'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('qdm_batch',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('batch_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('material', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('producer', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('quantity', sa.Float(), nullable=False),
    sa.Column('made_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('customer', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('order_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('batch_id')
    )
    with op.batch_alter_table('qdm_batch', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_qdm_batch_order_id'), ['order_id'], unique=False)

    op.create_table('qdm_environment',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('location', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('measured_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('temperature_c', sa.Float(), nullable=True),
    sa.Column('humidity_rh', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('location', 'measured_at', name='uq_environment')
    )
    op.create_table('qdm_genealogy',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('child_batch_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('parent_batch_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('quantity_used', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('child_batch_id', 'parent_batch_id', name='uq_genealogy_edge')
    )
    with op.batch_alter_table('qdm_genealogy', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_qdm_genealogy_child_batch_id'), ['child_batch_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_qdm_genealogy_parent_batch_id'), ['parent_batch_id'], unique=False)

    op.create_table('qdm_inspection',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('inspection_id', sqlmodel.sql.sqltypes.AutoString(length=96), nullable=False),
    sa.Column('station', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('inspected_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('verdict', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('defect_class', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('model_version', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True),
    sa.Column('image_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('frame_id', sqlmodel.sql.sqltypes.AutoString(length=96), nullable=True),
    sa.Column('latency_ms', sa.Float(), nullable=True),
    sa.Column('order_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('serial', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('batch_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('inspection_id')
    )
    with op.batch_alter_table('qdm_inspection', schema=None) as batch_op:
        batch_op.create_index('ix_inspection_order', ['order_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_qdm_inspection_batch_id'), ['batch_id'], unique=False)

    op.create_table('qdm_measurement',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('equipment', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('parameter', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('element_id', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('measured_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('unit', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('grade', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=True),
    sa.Column('raw_value', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('raw_unit', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('batch_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('order_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('equipment', 'parameter', 'measured_at', name='uq_measurement')
    )
    with op.batch_alter_table('qdm_measurement', schema=None) as batch_op:
        batch_op.create_index('ix_measurement_batch', ['batch_id'], unique=False)

    op.create_table('qdm_operator_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('operator_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('logged_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('station', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('order_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('batch_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('note', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('operator_id', 'logged_at', 'action', name='uq_operator_log')
    )
    with op.batch_alter_table('qdm_operator_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_qdm_operator_log_order_id'), ['order_id'], unique=False)

    op.create_table('qdm_order',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('customer', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('supplier', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('product', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('opened_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('closed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('order_id')
    )
    op.create_table('qdm_product',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('serial', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('product_type', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('order_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('batch_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('made_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('serial')
    )
    with op.batch_alter_table('qdm_product', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_qdm_product_batch_id'), ['batch_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_qdm_product_order_id'), ['order_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('qdm_product', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_qdm_product_order_id'))
        batch_op.drop_index(batch_op.f('ix_qdm_product_batch_id'))

    op.drop_table('qdm_product')
    op.drop_table('qdm_order')
    with op.batch_alter_table('qdm_operator_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_qdm_operator_log_order_id'))

    op.drop_table('qdm_operator_log')
    with op.batch_alter_table('qdm_measurement', schema=None) as batch_op:
        batch_op.drop_index('ix_measurement_batch')

    op.drop_table('qdm_measurement')
    with op.batch_alter_table('qdm_inspection', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_qdm_inspection_batch_id'))
        batch_op.drop_index('ix_inspection_order')

    op.drop_table('qdm_inspection')
    with op.batch_alter_table('qdm_genealogy', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_qdm_genealogy_parent_batch_id'))
        batch_op.drop_index(batch_op.f('ix_qdm_genealogy_child_batch_id'))

    op.drop_table('qdm_genealogy')
    op.drop_table('qdm_environment')
    with op.batch_alter_table('qdm_batch', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_qdm_batch_order_id'))

    op.drop_table('qdm_batch')
