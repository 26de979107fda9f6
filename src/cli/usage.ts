// A command line the CLI cannot run: main exits 2 and says where usage is.
import { NovacronError } from '../errors.js';

export class UsageError extends NovacronError {
  /** Print the whole usage text (an unknown command), not just a pointer to it. */
  readonly showUsage: boolean;
  constructor(message: string, showUsage = false) {
    super('ERR_USAGE', message);
    this.name = 'UsageError';
    this.showUsage = showUsage;
  }
}
