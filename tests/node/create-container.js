// Creates a blob container in Azurite with the development account's well-known key.
const { BlobServiceClient, StorageSharedKeyCredential } = require("@azure/storage-blob");
const [url, container] = process.argv.slice(2);
const key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const client = new BlobServiceClient(url, new StorageSharedKeyCredential("devstoreaccount1", key));
client.getContainerClient(container).createIfNotExists().then(
  () => process.exit(0),
  (e) => { console.error(e.message); process.exit(1); });
