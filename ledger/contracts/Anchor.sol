// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title qdspace ledger anchor
/// @notice Records Merkle roots of batches of leaf hashes so that anyone with read access to
///         the chain can check an inclusion proof. A root is recorded at most once: a batch
///         can never be anchored twice, even if a node resends after a crash.
/// @dev The contract knows nothing about what the leaves mean; `kind` is an opaque tag.
contract Anchor {
    struct Entry {
        uint64 leafCount;
        uint8 kind;
        address anchorer;
        uint64 blockNumber;
        uint64 timestamp;
    }

    mapping(bytes32 => Entry) private entries;

    /// @notice Emitted once per anchored root; `root` is indexed so a client can find the
    ///         transaction of a root with one log query.
    event Anchored(
        bytes32 indexed root,
        uint8 indexed kind,
        uint64 leafCount,
        address indexed anchorer,
        uint64 blockNumber,
        uint64 timestamp
    );

    error AlreadyAnchored(bytes32 root);
    error EmptyBatch();
    error ZeroRoot();

    /// @notice Anchor the Merkle root of a batch of `leafCount` leaves of one `kind`.
    function anchor(bytes32 root, uint64 leafCount, uint8 kind) external {
        if (root == bytes32(0)) revert ZeroRoot();
        if (leafCount == 0) revert EmptyBatch();
        if (entries[root].blockNumber != 0) revert AlreadyAnchored(root);
        uint64 number = uint64(block.number);
        uint64 time = uint64(block.timestamp);
        entries[root] = Entry(leafCount, kind, msg.sender, number, time);
        emit Anchored(root, kind, leafCount, msg.sender, number, time);
    }

    /// @notice Look a root up; all fields are zero when the root was never anchored.
    function lookup(bytes32 root)
        external
        view
        returns (uint64 leafCount, uint8 kind, address anchorer, uint64 blockNumber, uint64 timestamp)
    {
        Entry storage e = entries[root];
        return (e.leafCount, e.kind, e.anchorer, e.blockNumber, e.timestamp);
    }
}
